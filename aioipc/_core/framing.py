"""Sans-IO framing, length-prefixed or newline-delimited: bytes in, messages out, no I/O.

Wire format: each message is a 4-byte big-endian unsigned length followed by
that many payload bytes. Empty messages are allowed.

Rule 1: nothing here reads or writes a file descriptor; the async adapter in
``_streams`` feeds chunks in and takes messages out.
Rule 2: a header is checked against ``max_size`` before any byte of its
payload is buffered, and the buffer grows with the bytes that arrive
(doubling, up to the frame in progress): a header announcing 16 MiB costs
nothing until 16 MiB come. A peer cannot make us allocate more than twice
what it sent, nor more than ``max_size + 4 + one chunk``.
Rule 3: every whole message that arrived before a bad header is handed out
before the error is raised.

Example::

    framer = Framer(max_size=1024)
    framer.feed(Framer.encode(b"hi") + Framer.encode(b""))
    assert framer.next_message() == b"hi"
    assert framer.next_message() == b""
    assert framer.next_message() is NEED_DATA
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from struct import Struct
from typing import TYPE_CHECKING, Final

from .errors import FrameTooLarge, TruncatedMessage
from .speedups import FramerCore, framer_setup

__all__ = ["DEFAULT_MAX_SIZE", "EOF", "HEADER", "NEED_DATA", "PARSE_BATCH", "Framer", "LineFramer"]

HEADER: Final = Struct(">I")
DEFAULT_MAX_SIZE: Final = 16 * 2**20
_MAX_WIRE_SIZE: Final = 2**32 - 1
_MIN_READ: Final = 64 * 1024
PARSE_BATCH: Final = 1024
"""The most messages one parse pass takes out of a chunk; ``next_message()`` parses the next batch.

A receiver returns to its slow path (and its fairness budget) at least once a batch,
even when a chunk of 64 KiB holds 16,384 empty messages."""
_POOL_SIZE: Final = 16  # idle read buffers kept for the next stream that gets data
_POOL: list[bytearray] = []
_LARGE_SIZE: Final = 4  # grown buffers kept, for streams that carry large frames
_LARGE_MAX: Final = 4 * 2**20
_LARGE: list[bytearray] = []
_NO_BUFFER: Final = bytearray()
_NO_VIEW: Final = memoryview(_NO_BUFFER)
_NO_PARSED: Final[deque[bytes]] = deque()  # never appended to: a framer's until its first parse
_unpack_header = HEADER.unpack_from


def _take_buffer() -> bytearray:
    """A read buffer of ``_MIN_READ`` bytes: an idle stream's, given back earlier, or a new one."""
    return _POOL.pop() if _POOL else bytearray(_MIN_READ)


def _give_back(buffer: bytearray) -> None:
    if len(buffer) == _MIN_READ:
        if len(_POOL) < _POOL_SIZE:
            _POOL.append(buffer)
    elif len(buffer) <= _LARGE_MAX:
        _LARGE.append(buffer)
        if len(_LARGE) > _LARGE_SIZE:  # keep the largest
            _LARGE.remove(min(_LARGE, key=len))


def _take_large(size: int) -> bytearray | None:
    """A grown buffer an idle stream gave back, of at least ``size`` bytes, or ``None``.

    Large frames then cost one buffer instead of a doubling per frame; the pool is
    bounded for the whole process (``_LARGE_SIZE`` buffers of ``_LARGE_MAX`` at most),
    and holds only buffers that bytes which really arrived once made grow.
    """
    for index, buffer in enumerate(_LARGE):
        if len(buffer) >= size:
            return _LARGE.pop(index)
    return None


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    EOF = "EOF"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""Returned by :meth:`Framer.next_message` when more bytes are needed."""

EOF: Final = _Sentinel.EOF
"""Returned by :meth:`Framer.next_message` after a clean end of input."""


class _Decoder:
    """What both decoders share: bytes in (:meth:`feed`), whole messages out in ``parsed``."""

    __slots__ = ()
    _start: int  # first unparsed byte
    _end: int  # end of valid data
    _eof: bool

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages (excluding parsed messages)."""
        return self._end - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; ``b""`` means the input has ended."""
        if not data:
            self._input_ended()
            return
        self._add(memoryview(data).cast("B"))

    def _input_ended(self) -> None:
        """The input has ended: note it (``_eof``), and parse what is left if that makes a message."""
        raise NotImplementedError

    def _add(self, data: memoryview) -> None:
        raise NotImplementedError


class _PyFramerCore:
    """A length-prefixed framer's state and its per-read methods: the pure-Python twin of the
    compiled ``FramerCore`` (``speedups``), the base of :class:`Framer`."""

    __slots__ = ("_buf", "_end", "_eof", "_error", "_need", "_start", "_view", "max_size", "parsed", "total")
    _buf: bytearray
    _view: memoryview
    _start: int
    _end: int
    _need: int
    _eof: bool
    _error: FrameTooLarge | None
    max_size: int
    parsed: deque[bytes]
    total: int
    _make_room: Callable[[], None]  # the subclass's: compact or grow the buffer
    _next_at_end: Callable[[], _Sentinel]  # the subclass's: EOF, or TruncatedMessage

    def get_buffer(self, size_hint: int = _MIN_READ) -> memoryview:
        """A writable view to read into: the free room at the end of the buffer.

        With less than ``size_hint`` bytes free, the buffer is compacted, or
        grown by doubling when the frame in progress does not fit; it never
        grows past the frame in progress (``max_size`` plus a header at most).
        """
        buf = self._buf
        if not buf:  # idle until now: a pooled buffer, taken inline (this runs once a read)
            buf = self._buf = _POOL.pop() if _POOL else bytearray(_MIN_READ)
            view = self._view = memoryview(buf)
            return view
        free = len(buf) - self._end
        # Room enough for the rest of the frame in progress is room enough: making more
        # would move a large partial frame to the front once per read near its end.
        if free < size_hint and free < self._need - (self._end - self._start):
            self._make_room()
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Report that ``nbytes`` were written at the start of the last :meth:`get_buffer` view."""
        self._end += nbytes
        if self._end - self._start >= self._need and self._error is None:
            self._parse()

    def release(self) -> None:
        """Give the buffer back if no unparsed byte is in it (a stream about to go idle)."""
        buf = self._buf
        if self._start == self._end and buf:
            if len(buf) == _MIN_READ and len(_POOL) < _POOL_SIZE:  # inline: this runs once a wait
                _POOL.append(buf)
            else:
                _give_back(buf)
            self._buf = _NO_BUFFER
            self._view = _NO_VIEW
            self._start = self._end = 0

    def next_message(self) -> bytes | _Sentinel:
        """The next whole message, :data:`NEED_DATA`, or :data:`EOF` after a clean end.

        Raises:
            FrameTooLarge: the next frame announced more than ``max_size``.
            TruncatedMessage: the input ended inside a frame.
        """
        if self.parsed:
            return self.parsed.popleft()
        if self._end - self._start >= self._need and self._error is None:
            self._parse()  # the next batch of a chunk
            if self.parsed:
                return self.parsed.popleft()
        if self._error is not None:
            raise self._error
        if self._eof:
            return self._next_at_end()
        return NEED_DATA

    def _parse(self) -> None:
        """Parse one batch (``PARSE_BATCH``) of the whole frames received into ``parsed``."""
        buf = self._buf
        view = self._view
        start, end = self._start, self._end
        unpack = _unpack_header
        max_size = self.max_size
        parsed = self.parsed
        if parsed is _NO_PARSED:
            parsed = self.parsed = deque()
        append = parsed.append
        batch = PARSE_BATCH
        self._need = 4
        while end - start >= 4 and batch:
            (size,) = unpack(buf, start)
            if size > max_size:
                # Kept for next_message(): the whole messages before it go first.
                self._error = FrameTooLarge(size, max_size)
                break
            stop = start + 4 + size
            if stop > end:
                self._need = 4 + size
                break
            append(view[start + 4 : stop].tobytes())
            start = stop
            batch -= 1
        self.total += PARSE_BATCH - batch
        if start == end:
            self._start = self._end = 0
        else:
            self._start = start


def setup_compiled_framer() -> None:
    """Hand the compiled ``FramerCore`` this module's buffer pool, sentinels and limits (at import)."""
    framer_setup(
        _POOL,
        _give_back,
        _NO_BUFFER,
        _NO_VIEW,
        _NO_PARSED,
        FrameTooLarge,
        _MIN_READ,
        _POOL_SIZE,
        PARSE_BATCH,
        NEED_DATA,
    )


setup_compiled_framer()
if TYPE_CHECKING:
    _FramerBase = _PyFramerCore
else:
    _FramerBase = FramerCore or _PyFramerCore


class Framer(_FramerBase, _Decoder):
    """Decode length-prefixed frames from chunks of bytes, all complete frames in one pass.

    Feed bytes with :meth:`feed` (or read straight into :meth:`get_buffer`
    and report with :meth:`buffer_updated`); take messages with
    :meth:`next_message`. ``feed(b"")`` marks the end of input.

    The buffer grows with the bytes that arrive, doubling up to the frame in
    progress (never to the size a header announces before its bytes come),
    and :meth:`release` gives it back while nothing is pending, so an idle
    stream holds none.

    Raises:
        FrameTooLarge: a header announces more than ``max_size`` bytes; raised
            by :meth:`next_message` once the whole messages before it were taken.
        TruncatedMessage: input ends in the middle of a frame.
    """

    __slots__ = ()

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if not 0 <= max_size <= _MAX_WIRE_SIZE:
            raise ValueError(f"max_size must be between 0 and {_MAX_WIRE_SIZE}")
        self.max_size = max_size
        self._buf = _NO_BUFFER  # taken when bytes arrive, given back by release()
        self._view = _NO_VIEW  # the buffer is replaced, never resized in place
        self._start = 0  # first unparsed byte
        self._end = 0  # end of valid data
        self._need = HEADER.size  # bytes the next frame needs in the buffer
        # Messages not yet taken; next_message() pops them. Made by the first parse (a deque
        # is 760 B, which a connection that never sends would keep for nothing).
        self.parsed = _NO_PARSED
        self.total = 0  # messages parsed so far: ``total - len(parsed)`` have been taken
        self._eof = False
        self._error: FrameTooLarge | None = None  # raised once ``parsed`` is empty

    def _input_ended(self) -> None:
        self._eof = True

    @staticmethod
    def encode_header(size: int) -> bytes:
        """The 4-byte header for a payload of ``size`` bytes."""
        return HEADER.pack(size)

    @staticmethod
    def encode(message: bytes | bytearray | memoryview) -> bytes:
        """One whole frame: header and payload."""
        return HEADER.pack(len(message)) + message

    def _add(self, data: memoryview) -> None:
        while data and self._error is None:
            view = self.get_buffer(len(data))
            size = min(len(view), len(data))
            view[:size] = data[:size]
            self.buffer_updated(size)
            data = data[size:]

    def _next_at_end(self) -> _Sentinel:
        """:meth:`next_message` once the input has ended and every message was taken."""
        if self._end != self._start:
            raise TruncatedMessage(
                f"input ended inside a frame ({self._end - self._start} bytes of it received)"
            )
        return EOF

    def parse_pending(self) -> None:
        """Parse every whole frame already received, past the :data:`PARSE_BATCH` limit.

        For a caller that must know where the frames of the last read end
        (fds attached to a frame): afterwards ``total`` counts them all.
        """
        while self._end - self._start >= self._need and self._error is None:
            self._parse()

    def _make_room(self) -> None:
        pending = self._end - self._start
        capacity = len(self._buf)
        if self._error is not None:
            self._start = self._end = 0  # what follows a bad header is never parsed
            return
        if self._need <= capacity:
            # The frame fits: move what is pending to the front.
            self._buf[:pending] = self._buf[self._start : self._end]
            self._start, self._end = 0, pending
            return
        # Double, up to the frame in progress: growth follows the bytes that came.
        size = min(2 * capacity, self._need)
        new = _take_large(size) or bytearray(size)
        new[:pending] = self._view[self._start : self._end]
        if capacity == _MIN_READ:
            _give_back(self._buf)  # a pooled read buffer; grown ones in between are dropped
        self._buf = new
        self._view = memoryview(new)
        self._start = 0
        self._end = pending


class LineFramer(_Decoder):
    """Decode newline-delimited messages: each message is a line, sent with one ``\\n`` appended.

    The same interface as :class:`Framer`, so the framed streams take
    either. A received message is the line without its ``\\n`` (a ``\\r``
    before it is kept); an empty line is an empty message; a last line with
    no ``\\n`` before the end of input is a message too, as a shell's
    ``printf job`` would expect.

    Rule 1: every complete line before a line over ``max_size`` is handed
    out first; then :meth:`next_message` raises ``FrameTooLarge``.
    Rule 2: the buffer grows with the bytes that arrived, never ahead of them,
    and is given back whenever every byte in it was parsed (an idle stream
    holds none).

    Raises:
        FrameTooLarge: a line is longer than ``max_size`` bytes (its ``\\n`` not counted).

    Example::

        framer = LineFramer(max_size=1024)
        framer.feed(b"hi\\n\\nlast")
        framer.feed(b"")
        assert [framer.next_message() for _ in range(4)] == [b"hi", b"", b"last", EOF]
    """

    __slots__ = ("_buf", "_end", "_eof", "_error", "_scan", "_start", "max_size", "parsed")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if not 0 <= max_size <= _MAX_WIRE_SIZE:
            raise ValueError(f"max_size must be between 0 and {_MAX_WIRE_SIZE}")
        self.max_size = max_size
        self._buf = bytearray()
        self._start = 0  # first byte of the line being received
        self._scan = 0  # bytes before this are known to hold no newline
        self._end = 0  # end of valid data
        self.parsed: deque[bytes] = deque()
        self._eof = False
        self._error: FrameTooLarge | None = None

    @staticmethod
    def encode(message: bytes | bytearray | memoryview) -> bytes:
        """One whole line: the message and its ``\\n``.

        Raises:
            ValueError: the message holds a ``\\n`` of its own.
        """
        if b"\n" in message:
            raise ValueError("a message sent as a line cannot contain a newline")
        return bytes(message) + b"\n"

    def _input_ended(self) -> None:
        self._eof = True
        if self._end > self._start and self._error is None:  # a last line without its newline
            self.parsed.append(bytes(self._buf[self._start : self._end]))
            self._start = self._scan = self._end

    def _add(self, data: memoryview) -> None:
        size = len(data)
        self.get_buffer(size)[:size] = data
        self.buffer_updated(size)

    def get_buffer(self, size_hint: int = _MIN_READ) -> memoryview:
        """A writable view of at least ``size_hint`` bytes to read into."""
        if not self._buf and size_hint <= _MIN_READ:
            self._buf = _take_buffer()
        elif len(self._buf) - self._end < size_hint:
            pending = self._end - self._start
            new = bytearray(max(pending + size_hint, 2 * pending))
            new[:pending] = self._buf[self._start : self._end]
            self._scan -= self._start
            self._buf, self._start, self._end = new, 0, pending
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Report that ``nbytes`` were written at the start of the last :meth:`get_buffer` view."""
        self._end += nbytes
        if self._error is not None:
            return
        buf, start, end, limit = self._buf, self._start, self._end, self.max_size
        append = self.parsed.append
        scan = self._scan
        while (newline := buf.find(b"\n", scan, end)) >= 0:
            if newline - start > limit:
                self._error = FrameTooLarge(newline - start, limit)
                break
            append(bytes(buf[start:newline]))
            start = scan = newline + 1
        else:
            scan = end
            if end - start > limit:
                self._error = FrameTooLarge(end - start, limit)
        self._start, self._scan, self._end = start, scan, end
        if start == end and self._error is None:
            self.release()

    def release(self) -> None:
        """Give the buffer back if no unparsed byte is in it (a stream about to go idle)."""
        if self._start == self._end and self._buf:
            _give_back(self._buf)
            self._buf = bytearray()
            self._start = self._scan = self._end = 0

    def next_message(self) -> bytes | _Sentinel:
        """The next whole line, :data:`NEED_DATA`, or :data:`EOF` after the end of input.

        Raises:
            FrameTooLarge: the next line is over ``max_size`` (after every line before it).
        """
        if self.parsed:
            return self.parsed.popleft()
        if self._error is not None:
            raise self._error
        return EOF if self._eof else NEED_DATA
