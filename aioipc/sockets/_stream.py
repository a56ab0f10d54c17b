"""Stream sockets (Unix ``SOCK_STREAM``, TCP) as byte streams, with fd passing.

The byte path is the shared fd stream (``read``/``writev`` on the fd, small
sends coalesced); this module adds what only sockets have: ``SCM_RIGHTS``
file descriptors, half-close with ``shutdown``, peer credentials, and the
default framed Unix stream whose messages carry fds (:class:`FramedUnixStream`).
"""

from __future__ import annotations

import array
import asyncio
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from .._core.errors import FdsTruncated, FrameTooLarge, map_exceptions
from .._core.fdcore import WithFds
from .._core.fdio import close_fds, fds_from_ancillary
from .._core.fdstreams import FdByteStream, FdReceiveStream, FdSendStream
from .._core.framing import DEFAULT_MAX_SIZE, HEADER, Framer
from .._core.speedups import recv_fill, try_recv_fill
from .._core.streams import (
    Buffer,
    BufferSink,
    FramedStream,
)
from ._base import SocketHandle, shutdown_write, socket_extra

__all__ = ["FdsTruncated", "FramedUnixStream", "SocketReceiveStream", "SocketSendStream", "SocketStream"]

DEFAULT_MAX_FDS = 16


_ANCSIZE = socket.CMSG_SPACE(DEFAULT_MAX_FDS * 4)


_DISCARDED = bytearray(65536)  # where closing sockets drop what arrived unread (never read back)


def check_fds(fds: Sequence[int]) -> array.array[int]:
    """The ``SCM_RIGHTS`` payload for ``fds``.

    Raises:
        ValueError: no fds, or one that is not an int.
    """
    if not fds:
        raise ValueError("send_fds needs at least one file descriptor")
    if not all(isinstance(fd, int) and fd >= 0 for fd in fds):
        raise ValueError(f"file descriptors must be non-negative ints, not {list(fds)!r}")
    return array.array("i", fds)


def rights_message(data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int, max_fds: int) -> list[int]:
    """The fds of a received message; closes them and raises if the kernel truncated them."""
    fds = fds_from_ancillary(ancdata)
    if flags & socket.MSG_CTRUNC:
        close_fds(fds)
        raise FdsTruncated(max_fds, data)
    return fds


class SocketReceiveStream(FdReceiveStream):
    """The receiving half of a stream socket; adds :meth:`receive_fds`."""

    _notes: FramedUnixStream | None = None  # the framed stream over it, which numbers frames (Rule 3)

    def __init__(self, handle: SocketHandle, *, path: str | None = None) -> None:
        super().__init__(handle)
        self._sock = handle.sock
        self._path = path
        self._unclaimed_fds: list[int] | tuple[()] = ()  # fds a cancelled read had taken

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**super().extra_attributes, **socket_extra(self._sock, self._path)}

    async def receive_fds(
        self, max_bytes: int = 65536, max_fds: int = DEFAULT_MAX_FDS
    ) -> tuple[bytes, list[int]]:
        """Receive bytes and the file descriptors sent with them (``SCM_RIGHTS``).

        The caller owns the returned fds (they are close-on-exec). Fds ride
        on the first byte of a :meth:`SocketSendStream.send_fds`; a plain
        ``receive()`` reading that byte makes the kernel close them.

        Raises:
            FdsTruncated: more than ``max_fds`` came; all were closed.
            anyio.EndOfStream: the peer closed its end.

        Example::

            data, fds = await stream.receive_fds(max_fds=1)
            with open(fds[0], "rb") as f: ...
        """
        buffer = bytearray(max_bytes)
        n, fds = await self.receive_into_fds(memoryview(buffer), max_fds)
        return bytes(buffer[:n]), fds

    async def fill_fds(self, sink: BufferSink, max_fds: int = DEFAULT_MAX_FDS) -> list[int]:
        """:meth:`fill` with fds: read once into ``sink``; return the fds that came with the bytes.

        Like :meth:`fill`, it holds no buffer while it waits: the sink's
        buffer is given back (``release()``) and taken again in the loop
        callback that reads, so an idle connection costs no read buffer.

        Raises:
            FdsTruncated: more than ``max_fds`` came; all were closed (the bytes went to ``sink``).
            anyio.EndOfStream: the peer closed its end.
        """
        notes = self._notes
        before = 0
        if notes is not None:
            if sink is notes._frames:  # the framed stream's own read: its fds are noted by frame
                if notes._fds:
                    notes._drop_taken()
                before = notes._frames.total
            else:
                notes = None
        if self._unclaimed or self._unclaimed_fds:  # what a cancelled read had taken comes first
            with self._guard:
                buffer = sink.get_buffer(max(len(self._unclaimed), 1))
                n = min(len(buffer), len(self._unclaimed))
                buffer[:n] = self._unclaimed[:n]
                self._unclaimed = self._unclaimed[n:]
                fds, self._unclaimed_fds = list(self._unclaimed_fds), ()
                sink.buffer_updated(n)
            if notes is not None and fds:
                notes._arrived(before, fds)
                return []
            return fds
        ancsize = _ANCSIZE if max_fds == DEFAULT_MAX_FDS else socket.CMSG_SPACE(max_fds * 4)
        handle = self._handle
        now = True  # false once a read here found the socket empty: handle.read need not try again
        if not handle._reader_armed and self._budget > 0 and not self._guard.busy and handle.fd >= 0:
            # The common case of a reader that keeps up with no wait: read now.
            self._budget -= 1
            try:
                got = try_recv_fill(handle.fd, self._sock, sink, ancsize)
            except OSError:
                with map_exceptions():
                    raise
            if got is None:
                now = False
            elif isinstance(got, int):
                if not got:
                    raise anyio.EndOfStream
                return []
            else:
                return self._fds_of_read(got, max_fds, notes, before)
        guard = self._guard  # entered by hand: this runs once a wait
        if guard.busy:
            raise anyio.BusyResourceError("receiving")
        guard.busy = True
        try:
            if self._budget <= 0:
                await self._yield_fairly()
            self._budget -= 1
            got = None
            if now and not handle._reader_armed and handle.fd >= 0:
                got = try_recv_fill(handle.fd, self._sock, sink, ancsize)
            if got is None:
                sink.release()  # no buffer while parked: one is taken when data comes
                # Parked on the handle's future itself, not in handle.read: one coroutine
                # fewer for as long as the connection is idle (a socket never waits first).
                waiter = handle.park_read(recv_fill, self._sock, sink, ancsize)
                self._parking()
                try:
                    got = await waiter
                except asyncio.CancelledError:
                    handle.keep_read(waiter, self._keep_fds)
                    raise
                finally:
                    handle.end_read()
        except OSError:
            with map_exceptions():
                raise
        finally:
            guard.busy = False
        if isinstance(got, int):
            if not got:
                raise anyio.EndOfStream
            return []
        return self._fds_of_read(got, max_fds, notes, before)

    @staticmethod
    def _fds_of_read(got: WithFds, max_fds: int, notes: FramedUnixStream | None, before: int) -> list[int]:
        """The fds of a read that carried ancillary data; noted by frame when a framed stream reads."""
        try:
            fds: list[int] | None = rights_message(*got, max_fds)
        except FdsTruncated:  # the fds were closed; the bytes went to the sink all the same
            if notes is None:
                raise
            fds = None
        if notes is None:
            assert fds is not None
            return fds
        notes._arrived(before, fds)
        return []

    def _keep_fds(self, got: int | WithFds) -> None:
        # Cancelled after the read: the bytes went to the sink; the fds wait for the next read.
        if not isinstance(got, int):
            self._unclaimed_fds = [*self._unclaimed_fds, *fds_from_ancillary(got[1])]

    async def receive_into_fds(
        self, buffer: memoryview, max_fds: int = DEFAULT_MAX_FDS
    ) -> tuple[int, list[int]]:
        """:meth:`receive_fds` into ``buffer``: how many bytes arrived, and the fds that came with them.

        The kernel ends a read right after the bytes that carried fds, so
        those bytes are the last ones in ``buffer``.
        """
        if max_fds < 1:
            raise ValueError("max_fds must be at least 1")
        sink = _Into(buffer)
        try:
            fds = await self.fill_fds(sink, max_fds)
        except anyio.get_cancelled_exc_class():
            if sink.n:  # read in the loop callback before the cancel: the next receive returns it
                self._keep_unclaimed(bytes(buffer[: sink.n]))
            raise
        return sink.n, fds


class _Into:
    """A caller's buffer as a one-read :class:`BufferSink`."""

    __slots__ = ("buffer", "n")

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer
        self.n = 0

    def get_buffer(self, size_hint: int = 0) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.n = nbytes

    def release(self) -> None:
        pass


class SocketSendStream(FdSendStream):
    """The sending half of a stream socket; adds :meth:`send_fds`."""

    def __init__(self, handle: SocketHandle, *, path: str | None = None) -> None:
        super().__init__(handle)
        self._sock = handle.sock
        self._path = path

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {**super().extra_attributes, **socket_extra(self._sock, self._path)}

    async def send_fds(self, data: Buffer, fds: Sequence[int]) -> None:
        """Send ``data`` with duplicates of ``fds`` attached (``SCM_RIGHTS``), after what is pending.

        The fds stay open here (the peer gets its own copies); close yours
        when you no longer need them.

        Raises:
            ValueError: empty ``data`` (a stream socket needs a byte to carry
                the fds), or no fds.
            anyio.BrokenResourceError: the peer is gone.
        """
        if not len(data):
            raise ValueError("send_fds needs at least one byte of data to carry the fds")
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, check_fds(fds))]
        with self._guard:
            self._check()
            await self._drain(0)
            self._check()
            view = memoryview(data).cast("B")
            handle = self._handle
            while True:
                try:
                    with map_exceptions():
                        sent = self._sock.sendmsg([view], rights)
                    break
                except BlockingIOError:
                    await handle.wait_writable()
                    self._check()
            if sent < len(view):
                # The fds went with the first part; the rest is written even if we are cancelled.
                self._pending += view[sent:]
                self._flush()
                await self._drain(0)
                self._check()


class SocketStream(FdByteStream):
    """A connected stream socket (Unix or TCP) as a two-way byte stream.

    ``send_eof()`` shuts the socket down for writing; the peer sees
    ``EndOfStream`` and can still answer. Unix sockets also carry file
    descriptors (:meth:`send_fds` / :meth:`receive_fds`) and know their
    peer: ``stream.extra(aioipc.PeerCredentials)``.
    """

    receiver: SocketReceiveStream
    sender: SocketSendStream

    def __init__(self, handle: SocketHandle, *, path: str | None = None) -> None:
        super().__init__(
            SocketReceiveStream(handle, path=path),
            SocketSendStream(handle, path=path),
            shutdown=shutdown_write,
        )

    def fileno(self) -> int:
        return self.receiver.fileno()

    def framed_stream(self, max_size: int) -> FramedStream | None:
        """What ``aioipc.framed(stream)`` gives with length framing: on a Unix socket, a
        :class:`~aioipc.sockets.FramedUnixStream` (fds travel with messages); else ``None``."""
        if self.receiver._sock.family != socket.AF_UNIX:
            return None
        return FramedUnixStream(self, max_size)

    async def aclose(self) -> None:
        """Close the socket, first discarding what arrived unread.

        Closing a socket with unread data makes the kernel reset the
        connection, and a reset makes the peer drop what it had not read
        yet: discarding it first (a TLS 1.3 session ticket nobody read, say)
        lets the peer see our last bytes and a clean ``EndOfStream``.
        """
        self._discard_unread()
        await super().aclose()

    def _discard_unread(self, limit: int = 16) -> None:
        sock = self.receiver._sock
        if self.receiver.fileno() < 0:
            return
        for _ in range(limit):
            try:
                if not sock.recv_into(_DISCARDED):
                    return
            except OSError:  # BlockingIOError: nothing more; anything else: closing anyway
                return

    async def send_fds(self, data: Buffer, fds: Sequence[int]) -> None:
        """See :meth:`SocketSendStream.send_fds`."""
        await self.sender.send_fds(data, fds)

    async def receive_fds(
        self, max_bytes: int = 65536, max_fds: int = DEFAULT_MAX_FDS
    ) -> tuple[bytes, list[int]]:
        """See :meth:`SocketReceiveStream.receive_fds`."""
        return await self.receiver.receive_fds(max_bytes, max_fds)


# -- length-prefixed messages with fds attached ------------------------------------------------
#
# Length-prefixed messages over a Unix stream socket, with file descriptors attached to messages.
#
# Rule 1: ``send_fds(message, fds)`` first writes everything pending, then
# the whole frame in one ``sendmsg`` with the fds on its first byte, so the
# fds ride on the bytes that start their frame.
# Rule 2: the kernel ends a read right after bytes that carried fds, so the
# fds of a read belong to the frame holding its last byte: the partial frame
# left over when the read ends inside a frame, else the last frame it
# completed. Every read is a ``recvmsg`` with room for fds; fds are never
# dropped by the kernel.
# Rule 3: frames are numbered in arrival order (the framer's ``total``), so
# no receive counts anything and a plain ``receive()`` is the framed
# stream's own; the fds of a frame that a plain ``receive()`` took are
# closed at the next read, or when the stream closes.


_NO_FRAME_FDS: dict[int, list[int] | None] = {}  # never written: what a stream that got no fds holds


class FramedUnixStream(FramedStream):
    """:func:`aioipc.framed` over a Unix stream socket: messages, and fds attached to them.

    What ``aioipc.connect("unix:...")`` returns and a ``unix:`` server's
    handler gets by default. ``send_fds(message, fds)`` sends one message
    with duplicates of ``fds``; the peer's ``receive_fds()`` returns that
    message and its fds (``[]`` for a message sent without). A plain
    ``receive()`` of a message that carried fds closes them (at the next
    read from the socket, or when the stream closes).

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
        super().__init__(stream, max_size)
        receiver = stream.receiver
        receiver._notes = self  # its fill_fds notes the fds of each read by frame (Rule 3)
        self._fill = type(receiver).fill_fds
        self._fill_from = receiver
        frames = self._framer
        assert isinstance(frames, Framer)  # length framing: frames are numbered
        self._frames = frames
        self._fds = _NO_FRAME_FDS  # frame number -> its fds (None: too many came); a dict once fds come

    def _arrived(self, before: int, fds: list[int] | None) -> None:
        """A read that began after frame ``before`` brought ``fds``: attach them to their frame."""
        frames = self._frames
        frames.parse_pending()  # where this read's frames end must be known now
        completed = frames.total - before
        if self._fds is _NO_FRAME_FDS:
            self._fds = {}
        self._fds[before + completed - (1 if completed and not frames.buffered else 0)] = fds

    def _drop_taken(self) -> None:
        """Close the fds of frames a plain ``receive()`` has taken."""
        taken = self._frames.total - len(self._parsed)
        for number in [number for number in self._fds if number < taken]:
            close_fds(self._fds.pop(number) or [])

    async def aclose(self) -> None:
        """Close the socket, and the fds of messages received but not taken by ``receive_fds()``."""
        for fds in self._fds.values():
            close_fds(fds or [])
        self._fds.clear()
        await super().aclose()

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
        message = await self.receive()
        if not self._fds:
            return message, []
        fds = self._fds.pop(self._frames.total - len(self._parsed) - 1, [])
        if fds is None:
            raise FdsTruncated(DEFAULT_MAX_FDS, message)
        return message, fds
