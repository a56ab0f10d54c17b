"""Message sockets: Unix ``SOCK_SEQPACKET`` and datagram sockets (Unix, UDP).

The kernel keeps message boundaries, so no framing: one ``send()`` is one
``sendmsg``, one ``receive()`` one ``recvmsg``, and a message over
``max_size`` is discarded by itself (the stream stays usable).

Rule 1: receive into one reused buffer of ``max_size + 1`` bytes of
anonymous memory (pages the kernel commits only when a message touches
them), so every message costs one syscall and no size probe.
Rule 2: a seqpacket receive of 0 bytes is an empty message when it carries
credentials (``SO_PASSCRED``) and the end of the stream when it carries none.
Rule 3: a send is one ``sendmsg`` of the whole message or nothing, so a
send that raised (cancelled while the peer's queue was full) sent nothing.
Rule 4 (fair): each socket yields to the loop once every ``FAIR_OPS``
operations, so a peer that keeps it full cannot starve the program.
"""

from __future__ import annotations

import errno
import logging
import mmap
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from .._core.attributes import IPCAttribute, PeerCredentials
from .._core.errors import FrameTooLarge, map_exceptions
from .._core.framing import DEFAULT_MAX_SIZE
from .._core.streams import FAIR_OPS, FAIR_SHIFT, Buffer, MessageStream, ResourceGuard, byte_view, fair_yield
from ._base import SocketHandle, close_fds, fds_from_ancillary, peer_credentials, socket_extra
from ._stream import DEFAULT_MAX_FDS, check_fds, rights_message

__all__ = ["DatagramStream", "MessageSocket", "SeqpacketStream"]

logger = logging.getLogger("aioipc")
# A reply that cannot reach its sender: unnamed (nothing to answer), gone, or not ours to reach.
_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.EACCES, errno.EPERM, errno.EDESTADDRREQ})

_UCRED = struct.Struct("3i")
_CREDS_SPACE = socket.CMSG_SPACE(_UCRED.size)
_RELEASE_ABOVE = 1 << 20  # give back the pages of a buffer after a message this large
_MSG_TRUNC = int(socket.MSG_TRUNC)
_Received = tuple[int, list[tuple[int, int, bytes]], int, Any]  # what recvmsg_into returns
_RECV_FLAGS = int(socket.MSG_TRUNC | socket.MSG_CMSG_CLOEXEC)


def _credentials(ancdata: list[tuple[int, int, bytes]]) -> PeerCredentials | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            return PeerCredentials(*_UCRED.unpack_from(data))
    return None


class MessageSocket(MessageStream):
    """Shared machinery of :class:`SeqpacketStream` and :class:`DatagramStream`."""

    _eof_on_empty = False

    def __init__(
        self, handle: SocketHandle, *, max_size: int = DEFAULT_MAX_SIZE, path: str | None = None
    ) -> None:
        if not 0 <= max_size < 2**32:
            raise ValueError("max_size must be between 0 and 2**32 - 1")
        self._handle = handle
        self._sock = handle.sock
        self.max_size = max_size
        self._receive_guard = ResourceGuard("receiving")
        self._send_guard = ResourceGuard("sending")
        self._buffer: mmap.mmap | None = None
        self._unix = handle.sock.family == socket.AF_UNIX
        # An IP datagram is at most 65535 bytes: no need for a larger buffer.
        self._buffer_size = max_size + 1 if self._unix else min(max_size, 65535) + 1
        if self._unix:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._ancsize = _CREDS_SPACE if self._unix else 0
        self._last_ancdata: list[tuple[int, int, bytes]] = []
        self._kept: _Received | None = None
        self._eof_sent = False
        self._budget = FAIR_OPS  # fairness: operations left before a yield to the loop
        self._extra: dict[Any, Callable[[], Any]] = {IPCAttribute.fd: handle.fileno}
        self._extra.update(socket_extra(self._sock, path))
        if self._unix:
            self._extra[IPCAttribute.peer_credentials] = self._extra[PeerCredentials] = self._peer

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._handle.fd}>"

    def fileno(self) -> int:
        return self._handle.fd

    def _peer(self) -> PeerCredentials:
        try:
            return peer_credentials(self._sock)
        except anyio.TypedAttributeLookupError:
            credentials = _credentials(self._last_ancdata)
            if credentials is None:
                raise
            return credentials

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._extra

    # -- receiving ------------------------------------------------------------------------

    async def _receive(self, max_fds: int) -> tuple[bytes, list[int], Any]:
        """One message, its fds and the sender's address."""
        with self._receive_guard:
            handle = self._handle
            if handle.fd < 0:
                raise anyio.ClosedResourceError
            await self._spend()
            buffer = self._buffer
            if buffer is None:
                buffer = self._buffer = mmap.mmap(
                    -1, self._buffer_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                )
            if self._kept is not None:  # what a cancelled receive had already taken
                result, self._kept = self._kept, None
            else:
                ancsize = self._ancsize + (socket.CMSG_SPACE(max_fds * 4) if max_fds else 0)
                recvmsg_into = self._sock.recvmsg_into
                try:
                    try:  # a queued message is one syscall away, even while the loop polls the fd
                        result = recvmsg_into([buffer], ancsize, _RECV_FLAGS)
                    except BlockingIOError:
                        result = await handle.read(
                            lambda _fd: recvmsg_into([buffer], ancsize, _RECV_FLAGS), self._keep
                        )
                except OSError:
                    with map_exceptions():
                        raise
            size, ancdata, flags, address = result
            self._budget -= size >> FAIR_SHIFT
            if ancdata:
                self._last_ancdata = ancdata  # the sender's credentials, parsed when asked for
            elif size == 0 and self._eof_on_empty:
                raise anyio.EndOfStream
            if size > self.max_size or flags & _MSG_TRUNC:
                close_fds(fds_from_ancillary(ancdata))
                raise FrameTooLarge(size, self.max_size)
            data = buffer[:size]
            if size > _RELEASE_ABOVE:
                buffer.madvise(mmap.MADV_DONTNEED)
            if not max_fds:  # a plain receive: fds sent along are closed (the kernel drops most)
                if len(ancdata) > 1 or (ancdata and ancdata[0][1] == socket.SCM_RIGHTS):
                    close_fds(fds_from_ancillary(ancdata))
                return data, [], address
            return data, rights_message(data, ancdata, flags, max_fds), address

    def _keep(self, result: _Received) -> None:
        self._kept = result

    async def receive(self) -> bytes:
        """The next whole message.

        Raises:
            FrameTooLarge: the message was over ``max_size``; it was discarded
                and the next ``receive()`` goes on with the following one.
            anyio.EndOfStream: the peer closed (seqpacket only).
            anyio.BrokenResourceError: the peer vanished with data unread (``ECONNRESET``).
        """
        data, _, _ = await self._receive(0)
        return data

    # -- sending --------------------------------------------------------------------------

    async def _spend(self) -> None:
        """Spend one unit of the fairness budget; yield to the loop first when it is spent."""
        if self._budget <= 0:
            await fair_yield()
            self._budget = FAIR_OPS
        self._budget -= 1

    def _check_send(self, size: int) -> None:
        if self._handle.fd < 0 or self._eof_sent:
            raise anyio.ClosedResourceError
        if size > self.max_size:
            raise FrameTooLarge(size, self.max_size)

    async def _send(self, parts: Sequence[Buffer], ancdata: list[tuple[int, int, Any]], address: Any) -> None:
        with self._send_guard:
            parts = [part if type(part) is bytes else byte_view(part) for part in parts]
            size = sum(map(len, parts))
            self._check_send(size)
            await self._spend()
            self._budget -= size >> FAIR_SHIFT
            handle = self._handle
            while True:
                try:
                    if address is None:
                        self._sock.sendmsg(parts, ancdata)
                    else:
                        self._sock.sendmsg(parts, ancdata, 0, address)
                    return
                except BlockingIOError:
                    await handle.wait_writable()
                    self._check_send(0)
                except OSError as exc:
                    if address is not None and exc.errno == errno.ECONNREFUSED:
                        raise  # nobody at that address: the caller's error, not a broken socket
                    with map_exceptions():  # connected: ECONNREFUSED means the peer is gone
                        raise

    async def send(self, item: Buffer) -> None:
        """Send one message (one syscall; waits while the peer's queue is full).

        Raises:
            FrameTooLarge: over ``max_size``; nothing was sent.
            OSError: ``EMSGSIZE`` when the kernel's limit (the socket's
                ``SO_SNDBUF``) is lower than ``max_size``.
            anyio.BrokenResourceError: the peer is gone.
        """
        await self._send((item,), [], None)

    async def aclose(self) -> None:
        self._handle.close()
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        await anyio.lowlevel.checkpoint()


class SeqpacketStream(MessageSocket):
    """A Unix ``SOCK_SEQPACKET`` connection: reliable, ordered, whole messages, with an end.

    Like a stream socket it has a peer, ``send_eof()`` and
    ``stream.extra(aioipc.PeerCredentials)``; like a datagram socket it keeps
    message boundaries, so it needs no framing. Empty messages are allowed.
    File descriptors travel with a message (:meth:`send_fds`).

    Example::

        async with await aioipc.connect("unix+seqpacket:/run/app.sock") as msgs:
            await msgs.send(b"ping")
            reply = await msgs.receive()
    """

    _eof_on_empty = True

    async def send_eof(self) -> None:
        """Shut down the sending direction: the peer's ``receive()`` raises ``EndOfStream``."""
        if self._handle.fd < 0:
            raise anyio.ClosedResourceError
        if not self._eof_sent:
            self._eof_sent = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        await anyio.lowlevel.checkpoint()

    async def send_fds(self, data: Buffer, fds: Sequence[int]) -> None:
        """Send one message with duplicates of ``fds`` attached (``SCM_RIGHTS``); yours stay open.

        Raises:
            ValueError: no fds.
        """
        await self._send((data,), [(socket.SOL_SOCKET, socket.SCM_RIGHTS, check_fds(fds))], None)

    async def receive_fds(self, max_fds: int = DEFAULT_MAX_FDS) -> tuple[bytes, list[int]]:
        """One message and the fds sent with it; the caller owns the fds (close-on-exec).

        Raises:
            FdsTruncated: more than ``max_fds`` came; all were closed.
            FrameTooLarge: the message was over ``max_size`` (its fds were closed).
        """
        if max_fds < 1:
            raise ValueError("max_fds must be at least 1")
        data, fds, _ = await self._receive(max_fds)
        return data, fds


class DatagramStream(MessageSocket):
    """A datagram socket (Unix ``SOCK_DGRAM`` or UDP) as a message stream.

    Connected (made by ``connect``): ``send()`` goes to the peer. Bound
    (a server): ``receive_from()`` tells who sent a message and ``send_to()``
    answers; plain ``send()`` answers the sender of the last message
    received, so the same echo handler works as for connections.

    Caveats:
        Datagrams have no end: closing the peer is not seen by the receiver
        (``send_eof()`` is not supported). UDP may drop, duplicate or reorder
        messages and has no backpressure; Unix datagrams do not. A Unix
        datagram is bounded by the sender's ``SO_SNDBUF`` (about 200 KiB by
        default), a UDP one by 65507 bytes. On Unix sockets,
        ``extra(aioipc.PeerCredentials)`` is the sender of the last message
        received (or the socketpair peer before any).

        The stream a ``unix+dgram:`` or ``udp:`` server hands its handler is
        a *serving* one: one sender cannot end the handler's loop. A
        datagram over ``max_size`` is logged and skipped, and a reply with
        ``send()`` that cannot reach its sender (an unnamed sender such as
        ``socat - UNIX-SENDTO:``, or one that left) is logged and dropped.
        ``send_to()`` always raises.
    """

    def __init__(
        self,
        handle: SocketHandle,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        path: str | None = None,
        connected: bool = True,
        serving: bool = False,
    ) -> None:
        super().__init__(handle, max_size=max_size, path=path)
        self._connected = connected
        self._serving = serving
        self._last_sender: Any = None

    async def receive(self) -> bytes:
        data, _ = await self.receive_from()
        return data

    async def receive_from(self) -> tuple[bytes, Any]:
        """The next message and its sender's address (a path, ``b"\\0name"``, or ``(host, port)``).

        The address is ``None`` for an unnamed sender (a Unix socket that
        never bound): there is nobody to answer.

        Raises:
            FrameTooLarge: the message was over ``max_size``; it was discarded
                (a serving stream logs it and receives the next one instead).
        """
        while True:
            try:
                data, _, address = await self._receive(0)
            except FrameTooLarge as exc:
                if not self._serving:
                    raise
                logger.warning("%s: dropped a datagram: %s", self._name(), exc)
                continue
            self._last_sender = address
            return data, address

    def _name(self) -> str:
        path = self._extra.get(IPCAttribute.path)
        return f"datagram socket {path()}" if path is not None else repr(self)

    async def send(self, item: Buffer) -> None:
        """Send to the peer (connected), or answer the sender of the last message received.

        Raises:
            OSError: ``EDESTADDRREQ`` answering an unnamed sender, or before any
                message arrived; ``ConnectionRefusedError`` when the sender left.
                A serving stream logs these and drops the reply.
        """
        if self._connected:
            await self._send((item,), [], None)
            return
        try:
            if self._last_sender is None:
                raise OSError(
                    errno.EDESTADDRREQ, "no destination: the sender is unnamed, or nothing was received"
                )
            await self._send((item,), [], self._last_sender)
        except OSError as exc:
            if not self._serving or exc.errno not in _UNREACHABLE:
                raise
            logger.warning(
                "%s: dropped a reply to %r: %s", self._name(), self._last_sender, exc.strerror or exc
            )

    async def send_to(self, item: Buffer, address: Any) -> None:
        """Send one message to ``address`` (as ``receive_from()`` gives it).

        Raises:
            ConnectionRefusedError: nobody is bound at ``address`` (Unix).
        """
        await self._send((item,), [], address)

    async def send_eof(self) -> None:
        """Not supported: a datagram socket has no end of stream.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("datagram sockets have no end of stream; close the socket instead")
