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

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, overload

import anyio
import anyio.abc

from .errors import FrameTooLarge, IPCError
from .framing import DEFAULT_MAX_SIZE, EOF, HEADER, Framer

__all__ = [
    "ByteReceiveStream",
    "ByteSendStream",
    "ByteStream",
    "FramedReceiveStream",
    "FramedSendStream",
    "FramedStream",
    "MessageReceiveStream",
    "MessageSendStream",
    "MessageStream",
    "ResourceGuard",
    "framed",
]

Buffer = bytes | bytearray | memoryview
_pack_header = HEADER.pack


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


def _never(parts: Sequence[Buffer]) -> bool:
    return False


def _check_max_size(max_size: int) -> int:
    if not 0 <= max_size < 2**32:
        raise ValueError("max_size must be between 0 and 2**32 - 1")
    return max_size


class FramedReceiveStream(MessageReceiveStream):
    """Messages decoded from a byte stream's length-prefixed frames.

    Every complete frame in a received chunk is parsed in one pass; the
    following ``receive()`` calls return them without touching the stream.

    Raises:
        FrameTooLarge: a header announced more than ``max_size`` bytes (then
            every later receive raises ``BrokenResourceError``).
        TruncatedMessage: the peer closed or died inside a frame (a ``ProtocolError``
            and a ``BrokenResourceError``).
        anyio.EndOfStream: the peer closed between frames.
    """

    def __init__(self, stream: anyio.abc.ByteReceiveStream, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.transport_stream = stream
        self.max_size = _check_max_size(max_size)
        self._framer = Framer(max_size)
        self._parsed = self._framer.parsed
        self._guard = ResourceGuard("receiving")
        self._broken: IPCError | None = None
        self._receive_into = stream.receive_into if isinstance(stream, ByteReceiveStream) else None

    async def receive(self) -> bytes:
        # The common case, with no await: a message parsed from an earlier chunk.
        if self._parsed and self._broken is None and not self._guard.busy:
            return self._parsed.popleft()
        guard = self._guard  # entered by hand: this is the hot path of every framed receive
        if guard.busy:
            raise anyio.BusyResourceError("receiving")
        guard.busy = True
        try:
            framer = self._framer
            parsed = self._parsed
            receive_into = self._receive_into
            while True:
                if self._broken is not None:
                    raise anyio.BrokenResourceError(
                        "the stream received a bad frame earlier"
                    ) from self._broken
                if parsed:
                    return parsed.popleft()
                try:
                    if framer.next_message() is EOF:
                        raise anyio.EndOfStream
                    try:
                        if receive_into is not None:
                            framer.buffer_updated(await receive_into(framer.get_buffer()))
                        else:
                            framer.feed(await self.transport_stream.receive())
                    except anyio.EndOfStream:
                        framer.feed(b"")
                except IPCError as exc:
                    self._broken = exc
                    raise
        finally:
            guard.busy = False

    async def aclose(self) -> None:
        await self.transport_stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.transport_stream.extra_attributes


class FramedSendStream(MessageSendStream):
    """Messages sent as length-prefixed frames over a byte stream.

    Raises:
        FrameTooLarge: the message is over ``max_size``; nothing was sent.
    """

    def __init__(self, stream: anyio.abc.ByteSendStream, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.transport_stream = stream
        self.max_size = _check_max_size(max_size)
        self._send_parts: Callable[[Sequence[Buffer]], Awaitable[None]] | None = None
        self._try_send_parts: Callable[[Sequence[Buffer]], bool] = _never
        if isinstance(stream, ByteSendStream):
            self._send_parts = stream.send_parts
            self._try_send_parts = stream.try_send_parts

    async def send(self, item: bytes) -> None:
        data: Buffer = item
        if type(data) is memoryview:
            data = data.cast("B")  # the frame length counts bytes, not items
        size = len(data)
        if size > self.max_size:
            raise FrameTooLarge(size, self.max_size)
        if self._send_parts is not None:
            parts = (_pack_header(size), data)
            if not self._try_send_parts(parts):
                await self._send_parts(parts)
        else:
            await self.transport_stream.send(HEADER.pack(size) + data)

    async def aclose(self) -> None:
        await self.transport_stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.transport_stream.extra_attributes


class FramedStream(MessageStream):
    """A two-way message stream over a two-way byte stream."""

    def __init__(self, stream: anyio.abc.ByteStream, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.transport_stream = stream
        self.max_size = max_size
        self._receiver = FramedReceiveStream(stream, max_size)
        self._sender = FramedSendStream(stream, max_size)

    async def receive(self) -> bytes:
        return await self._receiver.receive()

    async def send(self, item: bytes) -> None:
        await self._sender.send(item)

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.transport_stream.extra_attributes


@overload
def framed(stream: anyio.abc.ByteStream, max_size: int = ...) -> FramedStream: ...  # type: ignore[overload-overlap]
@overload
def framed(stream: anyio.abc.ByteReceiveStream, max_size: int = ...) -> FramedReceiveStream: ...
@overload
def framed(stream: anyio.abc.ByteSendStream, max_size: int = ...) -> FramedSendStream: ...
def framed(
    stream: anyio.abc.ByteStream | anyio.abc.ByteReceiveStream | anyio.abc.ByteSendStream,
    max_size: int = DEFAULT_MAX_SIZE,
) -> FramedStream | FramedReceiveStream | FramedSendStream:
    """Turn a byte stream into a message stream of length-prefixed frames.

    Each message goes on the wire as a 4-byte big-endian length and the
    payload, so a program in any language can speak it.

    Args:
        stream: a two-way byte stream, or just its receiving or sending half.
        max_size: the largest message accepted or sent, checked before allocation.

    Raises:
        ValueError: ``stream`` is not a byte stream.

    Example::

        r, w = aioipc.pipe()
        async with aioipc.framed(w) as tx, aioipc.framed(r) as rx:
            await tx.send(b"hello")
            assert await rx.receive() == b"hello"
    """
    if isinstance(stream, anyio.abc.ByteStream):
        return FramedStream(stream, max_size)
    if isinstance(stream, anyio.abc.ByteReceiveStream):
        return FramedReceiveStream(stream, max_size)
    if isinstance(stream, anyio.abc.ByteSendStream):
        return FramedSendStream(stream, max_size)
    raise ValueError(f"framed() needs a byte stream, not {type(stream).__name__}")
