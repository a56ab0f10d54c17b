"""Length-prefixed messages over a Unix stream socket, with file descriptors attached to messages.

Rule 1: ``send_fds(message, fds)`` first writes everything pending, then
the whole frame in one ``sendmsg`` with the fds on its first byte, so the
fds ride on the bytes that start their frame.
Rule 2: the kernel ends a read right after bytes that carried fds, so the
fds of a read belong to the last frame that *starts* in it: the partial
frame left over when the read ends inside a frame, else the last frame it
completed. Every read is a ``recvmsg`` with room for fds; fds are never
dropped by the kernel, and a plain ``receive()`` closes the ones of its
message.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._core.errors import FrameTooLarge
from .._core.framing import DEFAULT_MAX_SIZE, HEADER
from .._core.streams import (
    Buffer,
    BufferSink,
    ByteReceiveStream,
    FramedReceiveStream,
    FramedSendStream,
    FramedStream,
)
from ._base import close_fds
from ._stream import DEFAULT_MAX_FDS, FdsTruncated, SocketReceiveStream, SocketStream

__all__ = ["FramedUnixStream"]


class _FdReads(ByteReceiveStream):
    """The socket's receiving half as the framer's byte source, noting the fds of each read."""

    def __init__(self, receiver: SocketReceiveStream, messages: _FdMessages) -> None:
        self._receiver = receiver
        self._messages = messages

    async def fill(self, sink: BufferSink) -> None:
        # What the framed receive calls: lazy, no buffer held while the socket is idle.
        if self._messages.unsettled is not None:  # a read again: nothing completed since the last one
            self._messages.settle(completed=0)
        try:
            fds = await self._receiver.fill_fds(sink, DEFAULT_MAX_FDS)
        except FdsTruncated:  # the fds were closed; the bytes went to the framer all the same
            self._messages.arrived(None)
            return
        if fds:
            self._messages.arrived(fds)

    async def receive_into(self, buffer: memoryview) -> int:
        if self._messages.unsettled is not None:  # a read again: nothing completed since the last one
            self._messages.settle(completed=0)
        try:
            n, fds = await self._receiver.receive_into_fds(buffer, DEFAULT_MAX_FDS)
        except FdsTruncated as exc:  # the fds were closed; the bytes still belong to the frames
            self._messages.arrived(None)
            return len(exc.data)
        if fds:
            self._messages.arrived(fds)
        return n

    async def receive(self, max_bytes: int = 65536) -> bytes:
        buffer = bytearray(max_bytes)
        n = await self.receive_into(memoryview(buffer))
        return bytes(buffer[:n])

    async def aclose(self) -> None:
        await self._receiver.aclose()


class _FdMessages(FramedReceiveStream):
    """Framed receiving that notes which message each read's fds belong to.

    Its ``receive()`` is the plain framed one; the caller counts each
    message it returns in ``handed`` and takes its fds with :meth:`fds_of`.
    """

    def __init__(self, receiver: SocketReceiveStream, max_size: int) -> None:
        super().__init__(_FdReads(receiver, self), max_size)
        self.handed = 0  # messages returned so far (counted by the caller of receive())
        # (messages handed out at that read, its fds or None when they were too many)
        self.unsettled: tuple[int, list[int] | None] | None = None
        self.fds: dict[int, list[int] | None] = {}  # message number -> its fds

    def arrived(self, fds: list[int] | None) -> None:
        self.unsettled = (self.handed, fds)

    def settle(self, completed: int) -> None:
        """Attach unsettled fds once it is known how many frames their read completed."""
        if self.unsettled is None:
            return
        first, fds = self.unsettled
        self.unsettled = None
        partial = self._framer.buffered > 0
        number = first + completed if partial or not completed else first + completed - 1
        self.fds[number] = fds

    def fds_of(self, number: int) -> list[int] | None:
        """The fds of message ``number``, just returned (``[]`` if none)."""
        if self.unsettled is not None:
            self.settle(completed=1 + len(self._parsed))
        return self.fds.pop(number, []) if self.fds else []

    async def receive_with_fds(self) -> tuple[bytes, list[int]]:
        message = await self.receive()
        self.handed += 1
        fds = self.fds_of(self.handed - 1)
        if fds is None:
            raise FdsTruncated(DEFAULT_MAX_FDS, message)
        return message, fds

    async def aclose(self) -> None:
        unsettled = [] if self.unsettled is None else [self.unsettled[1]]
        for fds in [*self.fds.values(), *unsettled]:
            close_fds(fds or [])
        self.fds.clear()
        self.unsettled = None
        await super().aclose()


class FramedUnixStream(FramedStream):
    """:func:`aioipc.framed` over a Unix stream socket: messages, and fds attached to them.

    What ``aioipc.connect("unix:...")`` returns and a ``unix:`` server's
    handler gets by default. ``send_fds(message, fds)`` sends one message
    with duplicates of ``fds``; the peer's ``receive_fds()`` returns that
    message and its fds (``[]`` for a message sent without). A plain
    ``receive()`` of a message that carried fds closes them.

    Caveats:
        The fds travel with the frame's first byte, so a peer that is not
        aioipc must send each fd-carrying frame in one ``sendmsg``, after
        the frames before it, as aioipc does.

    Example::

        async with await aioipc.connect("unix:/run/app.sock") as msgs:
            with open("data.bin", "rb") as f:
                await msgs.send_fds(b"here", [f.fileno()])
    """

    transport_stream: SocketStream

    def __init__(self, stream: SocketStream, max_size: int = DEFAULT_MAX_SIZE) -> None:
        # Not FramedStream.__init__: it would build (and zero) a receiving framer only to drop it.
        self.transport_stream = stream
        self.max_size = max_size
        self.framing = "length"
        self._receiver = self._fd_messages = _FdMessages(stream.receiver, max_size)
        self._sender = FramedSendStream(stream, max_size)

    async def send_fds(self, message: Buffer, fds: Sequence[int]) -> None:
        """Send one message with duplicates of ``fds`` attached (``SCM_RIGHTS``); yours stay open.

        Raises:
            FrameTooLarge: the message is over ``max_size``; nothing was sent.
            ValueError: no fds.
            anyio.BrokenResourceError: the peer is gone.
        """
        data = memoryview(message).cast("B")
        if len(data) > self.max_size:
            raise FrameTooLarge(len(data), self.max_size)
        await self.transport_stream.send_fds(HEADER.pack(len(data)) + data, fds)

    async def receive_fds(self) -> tuple[bytes, list[int]]:
        """The next message and the fds sent with it (``[]`` if none); the caller owns the fds.

        Raises:
            FdsTruncated: more than 16 fds came with this message; they were closed
                (the message is in ``.data``; the stream goes on).
            FrameTooLarge, TruncatedMessage, anyio.EndOfStream: as for ``receive()``.
        """
        return await self._fd_messages.receive_with_fds()

    async def receive(self) -> bytes:
        messages = self._fd_messages  # no extra await layer: this is the hot path
        message = await messages.receive()
        messages.handed += 1
        if messages.unsettled is not None or messages.fds:
            close_fds(messages.fds_of(messages.handed - 1) or [])  # a plain receive drops them
        return message
