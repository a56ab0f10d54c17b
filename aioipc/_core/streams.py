"""Stream base classes (anyio-compatible) and the framing adapter.

Every aioipc stream is one of these, so each plugs into anyio's utilities
(``BufferedByteReceiveStream``, ``TextStream``, TLS wrapping) and raises
anyio's stream exceptions.

- :class:`ByteReceiveStream` / :class:`ByteSendStream` / :class:`ByteStream`:
  bytes with no boundaries (pipes, FIFOs, stream sockets).
- :class:`MessageReceiveStream` / :class:`MessageSendStream` /
  :class:`MessageStream`: whole messages of ``bytes``.
- :func:`framed` turns a byte stream, or either half of one, into a message
  stream using the 4-byte big-endian length prefix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, overload

import anyio
import anyio.abc
import anyio.lowlevel

from .errors import FrameTooLarge, IPCError
from .framing import DEFAULT_MAX_SIZE, EOF, HEADER, NEED_DATA, Framer, LineFramer
from .speedups import frame_send

__all__ = [
    "FAIR_OPS",
    "FAIR_SHIFT",
    "BufferSink",
    "ByteReceiveStream",
    "ByteSendStream",
    "ByteStream",
    "FramedReceiveStream",
    "FramedSendStream",
    "FramedStream",
    "MessageReceiveStream",
    "MessageSendStream",
    "MessageStream",
    "OverTransport",
    "QueueStream",
    "ResourceGuard",
    "SendOnlyByteStream",
    "SendOnlyMessageStream",
    "as_two_way",
    "byte_view",
    "fair_yield",
    "frame_connected",
    "framed",
]

Buffer = bytes | bytearray | memoryview
FramingName = Literal["length", "lines"]
_pack_header = HEADER.pack
_NEWLINE = (b"\n",)

FAIR_OPS: Final = 1024
"""Fairness: the budget a stream spends before it yields to the loop once.

Every receive or send that completes at once spends one unit, and streams
that move bytes one more per 4 KiB (``FAIR_SHIFT``); when the budget is
spent, the next operation first yields to the loop (``fair_yield``), so
other tasks, timeouts and signal handlers run even while a peer keeps the
stream full. Chosen by measurement (``benchmarks/bench_fairness.py``, 64 B
floods from another process): the longest a ticker task waited was 1.4 to
3.4 ms of CPU on a framed pipe, a unix socket and a ring, with a yield
every 0.01 to 0.4 ms of work. A budget of 128 made a flooded framed pipe
write every 128 sends instead of every 64 KiB and cost 15 to 20% of its
send throughput.
"""

FAIR_SHIFT: Final = 12
"""A stream that moves ``n`` bytes spends ``n >> FAIR_SHIFT`` more units (one per 4 KiB)."""

fair_yield = anyio.lowlevel.checkpoint
"""Yield to the loop once (a cancellation point): what a stream does when its budget is spent."""


def byte_view(data: Buffer) -> Buffer:
    """``data`` as a buffer whose ``len()`` counts bytes: typed views and arrays become ``"B"`` views.

    Raises:
        TypeError: ``data`` is not a contiguous bytes-like object.
    """
    if type(data) is bytes or type(data) is bytearray:
        return data
    view = memoryview(data)
    return view if view.itemsize == 1 and view.ndim == 1 else view.cast("B")


class BufferSink(Protocol):
    """What :meth:`ByteReceiveStream.fill` reads into: a framer (asyncio's ``BufferedProtocol`` shape)."""

    def get_buffer(self, size_hint: int = ...) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> None: ...
    def release(self) -> None: ...


class ResourceGuard:
    """Raise ``BusyResourceError`` when two tasks use one direction at once.

    ``busy`` is true while a task is inside the guard; a fast path that
    never awaits may check it instead of entering.
    """

    __slots__ = ("_action", "busy")

    def __init__(self, action: str) -> None:
        self._action = action
        self.busy = False

    def __enter__(self) -> None:
        if self.busy:
            raise anyio.BusyResourceError(self._action)
        self.busy = True

    def __exit__(self, *exc_info: object) -> None:
        self.busy = False


class ByteReceiveStream(anyio.abc.ByteReceiveStream):
    """A stream of bytes to receive. ``async for chunk in stream`` reads until EOF."""

    async def receive_into(self, buffer: memoryview) -> int:
        """Receive up to ``len(buffer)`` bytes into ``buffer``; return how many.

        Raises:
            anyio.EndOfStream: the peer closed its end.

        The default copies from :meth:`receive`; fd-backed streams read
        straight into ``buffer``.
        """
        data = await self.receive(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    async def fill(self, sink: BufferSink) -> None:
        """Receive once into ``sink.get_buffer()`` and report it with ``sink.buffer_updated(n)``.

        Raises:
            anyio.EndOfStream: the peer closed its end.

        The default reads into the buffer the sink has now; fd-backed
        streams give the sink's buffer back while they wait (``release()``)
        and take one only when data has come, so an idle stream holds none.
        """
        sink.buffer_updated(await self.receive_into(sink.get_buffer()))


class ByteSendStream(anyio.abc.ByteSendStream):
    """A stream of bytes to send."""

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        """Send the concatenation of ``parts`` as one unit (one ``writev`` where possible)."""
        await self.send(b"".join(parts))

    def try_send_parts(self, parts: Sequence[Buffer]) -> bool:
        """Take ``parts`` as one unit now if that needs no wait; ``False`` means ``await send_parts(parts)``.

        A cheap fast path for layers above (framing): the default never
        takes them; a stream that coalesces small sends takes them when a
        write is due anyway or the stream is idle.

        Raises:
            anyio.BrokenResourceError: the peer is gone.
        """
        return False


class ByteStream(ByteReceiveStream, ByteSendStream, anyio.abc.ByteStream):
    """A two-way byte stream; ``send_eof()`` closes the sending direction only."""


class MessageReceiveStream(anyio.abc.ObjectReceiveStream[bytes]):
    """Whole messages to receive; ``async for message in stream`` until the peer closes."""


class MessageSendStream(anyio.abc.ObjectSendStream[bytes]):
    """Whole messages to send."""


class MessageStream(MessageReceiveStream, MessageSendStream, anyio.abc.ObjectStream[bytes]):
    """A two-way message stream."""


class QueueStream(MessageStream):
    """A message stream through a kernel queue (POSIX, System V), which outlives every handle of it.

    A queue has no end of stream: ``send_eof()`` only stops the sends of
    this handle. A subclass sets ``_send_closed = False`` and refuses to
    send once it is true, and keeps its send fast path's fairness budget in
    ``_send_budget``, which ``send_eof()`` sets to 0 (the slow path then refuses).
    """

    _send_closed: bool
    _send_budget: int

    async def send_eof(self) -> None:
        """Stop sending through this handle (a queue has no end of stream: peers are not told)."""
        self._send_closed = True
        self._send_budget = 0
        await anyio.lowlevel.checkpoint()


def _check_max_size(max_size: int) -> int:
    if not 0 <= max_size < 2**32:
        raise ValueError("max_size must be between 0 and 2**32 - 1")
    return max_size


class OverTransport:
    """A stream layered on ``transport_stream``: its end, its close and its attributes are the transport's."""

    transport_stream: Any

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attrs: Mapping[Any, Callable[[], Any]] = self.transport_stream.extra_attributes
        return attrs


class _Framed(OverTransport):
    """What a framed stream (or either half) is over its byte stream: ``max_size`` and ``framing``."""

    def __init__(self, stream: Any, max_size: int, framing: FramingName) -> None:
        self.transport_stream = stream
        self.max_size = _check_max_size(max_size)
        self.framing = _check_framing(framing)


def _check_framing(framing: str) -> str:
    if framing not in ("length", "lines"):
        raise ValueError(f"framing must be 'length' or 'lines', not {framing!r}")
    return framing


class _ReceivesFrames(_Framed):
    """Receiving frames: :class:`FramedReceiveStream`'s, and :class:`FramedStream`'s own (no second one)."""

    def __init__(self, stream: Any, max_size: int, framing: FramingName) -> None:
        super().__init__(stream, max_size, framing)
        self._framer: Framer | LineFramer = Framer(max_size) if framing == "length" else LineFramer(max_size)
        self._parsed = self._framer.parsed  # the framer's (it makes one at its first parse: synced below)
        self._receiving = False  # a task is in receive()'s slow path (a flag, not a guard object)
        self._broken: IPCError | None = None
        # fill's function and the stream it reads from, not a bound method (64 B an idle
        # connection would keep); None: the stream has no fill, messages come from receive().
        self._fill: Callable[[Any, BufferSink], Awaitable[object]] | None = (
            type(stream).fill if isinstance(stream, ByteReceiveStream) else None
        )
        self._fill_from: Any = stream
        self._budget = FAIR_OPS

    async def receive(self, *, _end: type[Exception] = anyio.EndOfStream) -> bytes:
        # ``_end``: what a clean end raises (``StopAsyncIteration`` for ``__anext__``).
        # The common case, with no await: a message parsed from an earlier chunk.
        # The fairness budget is spent here a batch at a time, not per message.
        if self._parsed and self._broken is None and not self._receiving:
            return self._parsed.popleft()
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            if self._budget <= 0:
                await fair_yield()
                self._budget = FAIR_OPS
            framer = self._framer
            parsed = self._parsed
            fill = self._fill
            while True:
                if self._broken is not None:
                    raise anyio.BrokenResourceError(
                        "the stream received a bad frame earlier"
                    ) from self._broken
                if parsed:
                    self._budget -= len(parsed)  # what the fast path will hand out
                    return parsed.popleft()
                try:
                    message = framer.next_message()
                    if message is EOF:
                        raise _end
                    if message is not NEED_DATA:  # the next batch of a chunk already here
                        parsed = self._parsed = framer.parsed
                        self._budget -= 1 + len(parsed)
                        return message
                    try:
                        if fill is not None:
                            await fill(self._fill_from, framer)
                        else:
                            framer.feed(await self.transport_stream.receive())
                    except anyio.EndOfStream:
                        framer.feed(b"")
                    parsed = self._parsed = framer.parsed
                except IPCError as exc:
                    self._broken = exc
                    raise
        finally:
            self._receiving = False

    # Not ``async def`` (anyio's is): ``async for`` parks in receive() itself, one coroutine fewer
    # per waiting stream and per message.
    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        return self.receive(_end=StopAsyncIteration)


class FramedReceiveStream(_ReceivesFrames, MessageReceiveStream):
    """Messages decoded from a byte stream's length-prefixed frames (or lines, ``framing="lines"``).

    Every complete frame in a received chunk is parsed in one pass; the
    following ``receive()`` calls return them without touching the stream.

    Raises:
        FrameTooLarge: a header announced more than ``max_size`` bytes; raised
            after every whole message that came before it was received (then
            every later receive raises ``BrokenResourceError``).
        TruncatedMessage: the peer closed or died inside a frame (a ``ProtocolError``
            and a ``BrokenResourceError``).
        anyio.EndOfStream: the peer closed between frames.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteReceiveStream,
        max_size: int = DEFAULT_MAX_SIZE,
        framing: FramingName = "length",
    ) -> None:
        super().__init__(stream, max_size, framing)


class _SendsFrames(_Framed):
    """Sending frames: :class:`FramedSendStream`'s, and :class:`FramedStream`'s own (no second object)."""

    def __init__(self, stream: Any, max_size: int, framing: FramingName) -> None:
        super().__init__(stream, max_size, framing)
        self._lines = framing == "lines"
        self._parts = isinstance(stream, ByteSendStream)  # sends header and payload as parts

    async def _send_slow(self, item: bytes) -> None:
        data: Buffer = item
        if type(data) is not bytes:
            data = byte_view(data)  # the frame length counts bytes, not items
        size = len(data)
        if size > self.max_size:
            raise FrameTooLarge(size, self.max_size)
        if self._lines:
            if b"\n" in data:
                raise ValueError("a message sent as a line cannot contain a newline")
            parts: tuple[Buffer, ...] = (data, *_NEWLINE)
        else:
            parts = (_pack_header(size), data)
        stream = self.transport_stream
        if self._parts:
            if not stream.try_send_parts(parts):
                await stream.send_parts(parts)
        else:
            await stream.send(b"".join(parts))

    # Compiled: a coroutine without a frame that writes the frame at once through the transport's
    # SendCore when that needs no wait, else awaits _send_slow (which raises every error).
    send = frame_send or _send_slow


class FramedSendStream(_SendsFrames, MessageSendStream):
    """Messages sent as length-prefixed frames over a byte stream (or lines, ``framing="lines"``).

    Raises:
        FrameTooLarge: the message is over ``max_size``; nothing was sent.
        ValueError: with ``framing="lines"``, the message holds a newline; nothing was sent.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteSendStream,
        max_size: int = DEFAULT_MAX_SIZE,
        framing: FramingName = "length",
    ) -> None:
        super().__init__(stream, max_size, framing)


class FramedStream(_ReceivesFrames, _SendsFrames, MessageStream):
    """A two-way message stream over a two-way byte stream; it receives and sends frames itself."""

    def __init__(
        self, stream: anyio.abc.ByteStream, max_size: int = DEFAULT_MAX_SIZE, framing: FramingName = "length"
    ) -> None:
        super().__init__(stream, max_size, framing)


@overload
def framed(  # type: ignore[overload-overlap]
    stream: anyio.abc.ByteStream, max_size: int = ..., *, framing: FramingName = ...
) -> FramedStream: ...
@overload
def framed(
    stream: anyio.abc.ByteReceiveStream, max_size: int = ..., *, framing: FramingName = ...
) -> FramedReceiveStream: ...
@overload
def framed(
    stream: anyio.abc.ByteSendStream, max_size: int = ..., *, framing: FramingName = ...
) -> FramedSendStream: ...
def framed(
    stream: anyio.abc.ByteStream | anyio.abc.ByteReceiveStream | anyio.abc.ByteSendStream,
    max_size: int = DEFAULT_MAX_SIZE,
    *,
    framing: FramingName = "length",
) -> FramedStream | FramedReceiveStream | FramedSendStream:
    """Turn a byte stream into a message stream of length-prefixed frames, or of lines.

    With ``framing="length"`` (the default) each message goes on the wire as
    a 4-byte big-endian length and the payload, so a program in any language
    can speak it. With ``framing="lines"`` each message is a line: ``send()``
    appends exactly one ``\n``, and a received message is the line without
    it, which is what shell tools, ``socat`` and ``nc`` speak.

    Args:
        stream: a two-way byte stream, or just its receiving or sending half.
        max_size: the largest message accepted or sent, checked before allocation.
        framing: ``"length"`` or ``"lines"``.

    Raises:
        ValueError: ``stream`` is not a byte stream, or an unknown ``framing``.

    Caveats:
        A line cannot carry a newline: ``send()`` of one raises ``ValueError``.

    Example::

        r, w = aioipc.pipe()
        async with aioipc.framed(w) as tx, aioipc.framed(r) as rx:
            await tx.send(b"hello")
            assert await rx.receive() == b"hello"
    """
    if isinstance(stream, anyio.abc.ByteStream):
        # A transport with more to carry than bytes (a Unix socket: fds) frames itself.
        own = getattr(stream, "framed_stream", None) if framing == "length" else None
        return (own and own(max_size)) or FramedStream(stream, max_size, framing)
    if isinstance(stream, anyio.abc.ByteReceiveStream):
        return FramedReceiveStream(stream, max_size, framing)
    if isinstance(stream, anyio.abc.ByteSendStream):
        return FramedSendStream(stream, max_size, framing)
    raise ValueError(f"framed() needs a byte stream, not {type(stream).__name__}")


class _SendOnly(anyio.abc.AsyncResource):
    """What a stream over a sending half alone does besides sending: its end and its attributes."""

    sender: anyio.abc.AsyncResource

    async def send_eof(self) -> None:
        await self.sender.aclose()

    async def aclose(self) -> None:
        await self.sender.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attrs: Mapping[Any, Callable[[], Any]] = getattr(self.sender, "extra_attributes", {})
        return attrs


class SendOnlyMessageStream(_SendOnly, MessageStream):
    """A message stream over a sending half alone (a FIFO's writing end): ``receive()`` ends at once.

    Raises:
        anyio.EndOfStream: from ``receive()``: nothing ever comes back this way.
    """

    sender: anyio.abc.ObjectSendStream[bytes]

    def __init__(self, sender: anyio.abc.ObjectSendStream[bytes]) -> None:
        self.sender = sender

    async def receive(self) -> bytes:
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        await self.sender.send(item)


class SendOnlyByteStream(_SendOnly, ByteStream):
    """A byte stream over a sending half alone: ``receive()`` ends at once.

    See :class:`SendOnlyMessageStream`.
    """

    sender: anyio.abc.ByteSendStream

    def __init__(self, sender: anyio.abc.ByteSendStream) -> None:
        self.sender = sender

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.EndOfStream

    async def send(self, item: Buffer) -> None:
        await self.send_parts((item,))

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        if isinstance(self.sender, ByteSendStream):
            await self.sender.send_parts(parts)
        else:
            await self.sender.send(b"".join(parts))

    def try_send_parts(self, parts: Sequence[Buffer]) -> bool:
        return isinstance(self.sender, ByteSendStream) and self.sender.try_send_parts(parts)


def as_two_way(stream: anyio.abc.ByteStream | anyio.abc.ByteSendStream) -> ByteStream:
    """``stream`` as a two-way :class:`ByteStream` (a sending half gets a receive that ends at once)."""
    if isinstance(stream, ByteStream):
        return stream
    if isinstance(stream, anyio.abc.ByteStream):
        raise TypeError(f"{type(stream).__name__} is not an aioipc byte stream")
    return SendOnlyByteStream(stream)


def frame_connected(
    stream: anyio.abc.ByteStream | anyio.abc.ByteSendStream, max_size: int, framing: FramingName
) -> MessageStream:
    """A connected byte stream (or its sending half alone) as a two-way message stream."""
    if isinstance(stream, anyio.abc.ByteStream):
        return framed(stream, max_size, framing=framing)
    return SendOnlyMessageStream(FramedSendStream(stream, max_size, framing))
