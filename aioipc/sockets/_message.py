"""Message sockets: Unix ``SOCK_SEQPACKET`` and datagram sockets (Unix, UDP).

The kernel keeps message boundaries, so no framing, and a message over
``max_size`` is discarded by itself (the stream stays usable).

Rule 1 (batched receive): one ``recvmmsg`` takes up to ``RECV_MAX`` waiting
messages into ``max_size + 1`` byte slots of one reused anonymous mapping
(pages are committed only as messages touch them); ``receive()`` hands them
out with no syscall. Without the accelerator (:mod:`aioipc._core.speedups`)
a batch is one ``recvmsg``.
Rule 2: a seqpacket receive of 0 bytes is an empty message when it carries
credentials (``SO_PASSCRED``) and the end of the stream when it carries none.
Rule 3 (exactly what was said): a send that raised sent nothing and never
will; a message joins the pending batch only when its ``send()`` is going
to return normally. Send states of a Unix socket, for messages of at most
``_BATCH_LARGEST`` bytes sent to the peer:

- **idle**: nothing pending. A send goes out at once (one ``send``), so a
  lone message waits for no loop iteration, and schedules the end of the
  burst: -> burst.
- **burst**: a send happened in this loop iteration. Sends append to the
  pending list; at the end of the iteration one ``sendmmsg`` takes it all:
  -> idle, or -> parked when the peer's queue is full.
- **parked**: messages are pending and the peer is full: the handle
  watches the socket and sends more each time it turns writable. A send
  that finds ``SEND_MAX`` messages or ``HIGH_WATER`` bytes pending waits
  (backpressure). A send error (the peer is gone) drops what is pending and
  every later send raises ``BrokenResourceError``.

Larger messages, fds, credentials and datagrams to an address go unbatched
(one ``sendmsg``, after what is pending), their errors raised to the caller.
Rule 4 (fair): each socket yields to the loop once every ``FAIR_OPS``
operations, so a peer that keeps it full cannot starve the program.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from .._core.attributes import UCRED, IPCAttribute, PeerCredentials
from .._core.errors import FdsTruncated, FrameTooLarge, broken, map_exceptions
from .._core.fdio import close_fds
from .._core.framing import DEFAULT_MAX_SIZE
from .._core.messagecore import HIGH_WATER, SEND_MAX
from .._core.speedups import RECV_MAX, Batch, Item, MessageCore, buffer_size, recv_batch, recv_one, send_batch
from .._core.streams import FAIR_OPS, FAIR_SHIFT, Buffer, MessageStream, byte_view, fair_yield
from ._base import SocketHandle, peer_credentials, socket_extra
from ._stream import DEFAULT_MAX_FDS, check_fds

__all__ = ["DatagramStream", "MessageSocket", "SeqpacketStream"]

logger = logging.getLogger("aioipc")
# A reply that cannot reach its sender: unnamed (nothing to answer), gone, or not ours to reach.
_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.EACCES, errno.EPERM, errno.EDESTADDRREQ})

_CREDS_SPACE = socket.CMSG_SPACE(UCRED.size)
_SCM_MAX_FD = 253  # the kernel never passes more fds with one message
_RELEASE_ABOVE = 1 << 20  # give back the pages of a buffer after a message this large
_RECV_SPAN = 64 << 20  # the most address space the slots of one receive buffer take
_BATCH_LARGEST = 16 * 1024  # larger messages go unbatched: an error (EMSGSIZE) reaches their sender


class MessageSocket(MessageCore, MessageStream):
    """Shared machinery of :class:`SeqpacketStream` and :class:`DatagramStream`.

    ``send()`` and ``receive()`` are :class:`~aioipc._core.speedups.MessageCore`'s:
    their fast paths need no syscall (a send in a burst, a message received
    earlier); the rest is the slow paths' here.

    Caveats:
        With the accelerator, ``send()`` and ``receive()`` return a
        coroutine without a frame of its own: awaits, ``asyncio`` tasks,
        ``asyncio.iscoroutine()`` and anyio take it as any other, but
        ``inspect.iscoroutine()`` says False.

        ``aclose()`` first sends what is pending, waiting while the peer's
        queue is full; cancel it (or wrap it in a timeout) to close at once
        and drop the rest. Shrinking ``SO_SNDBUF`` after the stream was made
        can make a batched send fail later, breaking the stream.
    """

    _eof_on_empty = False
    _want_address = False

    def __init__(
        self, handle: SocketHandle, *, max_size: int = DEFAULT_MAX_SIZE, path: str | None = None
    ) -> None:
        if not 0 <= max_size < 2**32:
            raise ValueError("max_size must be between 0 and 2**32 - 1")
        self._handle = handle
        sock = self._sock = handle.sock
        self.max_size = max_size
        self._receiving = self._sending = False  # a task is in the slow path (BusyResourceError)
        self._fair_shift = FAIR_SHIFT
        self._buffer: mmap.mmap | None = None
        self._unix = sock.family == socket.AF_UNIX
        # An IP datagram is at most 65535 bytes: no need for a larger slot.
        self._slot = max_size + 1 if self._unix else min(max_size, 65535) + 1
        self._batch_largest = -1  # no batched sends but on Unix sockets
        self._control = 0
        self._recv_count = 1
        self._recv_batch: Callable[..., Batch] = recv_one
        if self._unix:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._control = _CREDS_SPACE + socket.CMSG_SPACE(DEFAULT_MAX_FDS * 4)
            # Pure Python reads one message per call into the whole buffer: a slot of one.
            self._recv_count = (
                max(1, min(RECV_MAX, _RECV_SPAN // self._slot)) if recv_batch is not recv_one else 1
            )
            self._recv_batch = recv_batch
            sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self._batch_largest = min(_BATCH_LARGEST, max_size, sndbuf // 2)
        # received, not yet handed out: message, sender's credentials, sender's address
        self._items: list[Item] = []
        self._creds: list[bytes | None] = []
        self._addrs: list[Any] | None = None
        self._next = 0
        self._last_creds: bytes | None = None
        self._last_sender: Any = None  # the address of the last message handed out (datagrams)
        # sending
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._parked = False
        self._send_error: OSError | None = None
        self._eof_sent = False
        self._budget = FAIR_OPS  # fairness: operations left before a yield to the loop
        self._extra: dict[Any, Callable[[], Any]] = {IPCAttribute.fd: handle.fileno}
        self._extra.update(socket_extra(sock, path))
        if self._unix:
            self._extra[IPCAttribute.peer_credentials] = self._extra[PeerCredentials] = self._peer

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._handle.fd} pending={len(self._pending)}>"

    def fileno(self) -> int:
        return self._handle.fd

    def _peer(self) -> PeerCredentials:
        try:
            return peer_credentials(self._sock)
        except anyio.TypedAttributeLookupError:
            if self._last_creds is None:
                raise
            return PeerCredentials.from_ucred(self._last_creds)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._extra

    # -- receiving ------------------------------------------------------------------------

    def _take(self, max_fds: int) -> tuple[bytes, list[int], Any]:
        """Hand out the next received message: its bytes, fds and sender's address."""
        i = self._next
        item = self._items[i]
        creds = self._creds[i]
        address = None if self._addrs is None else self._addrs[i]
        if i + 1 == len(self._items):  # the batch is spent: hold no messages
            self._items, self._creds, self._addrs, self._next = [], [], None, 0
        else:
            self._next = i + 1
        if creds is not None:
            self._last_creds = creds  # the sender's credentials, parsed when asked for
        if isinstance(item, bytes):
            self._budget -= len(item) >> FAIR_SHIFT
            return item, [], address
        if item is None:
            raise anyio.EndOfStream
        if isinstance(item, int):
            raise FrameTooLarge(item, self.max_size)
        data, fds, cut = item
        if not max_fds:  # a plain receive: fds sent along are closed
            close_fds(fds)
            return data, [], address
        if cut or len(fds) > max_fds:
            close_fds(fds)
            raise FdsTruncated(max_fds, data)
        return data, fds, address

    def _store(self, batch: Batch) -> None:
        self._items, self._creds, self._addrs = batch
        self._next = 0

    async def _receive(self, max_fds: int) -> tuple[bytes, list[int], Any]:
        """One message, its fds and the sender's address."""
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            handle = self._handle
            if handle.fd < 0:
                raise anyio.ClosedResourceError
            await self._spend()
            if self._next < len(self._items):  # what a cancelled receive had already taken
                return self._take(max_fds)
            count, control = self._recv_count, self._control
            if max_fds > DEFAULT_MAX_FDS:
                count, control = 1, _CREDS_SPACE + socket.CMSG_SPACE(min(max_fds, _SCM_MAX_FD) * 4)
            buffer = self._buffer
            size = buffer_size(self._slot, count, control)
            if buffer is None or len(buffer) < size:
                if buffer is not None:
                    buffer.close()
                size = max(size, buffer_size(self._slot, self._recv_count, self._control))
                buffer = self._buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            args = (self._sock, buffer, self._slot, count, control, self._eof_on_empty, self._want_address)
            receive = self._recv_batch
            try:
                try:  # a queued message is one syscall away, even while the loop polls the fd
                    batch = receive(*args)
                except BlockingIOError:
                    batch = await handle.read(lambda _fd: receive(*args), self._store, now=False)
            except OSError:
                with map_exceptions():
                    raise
            items = batch[0]
            self._budget -= len(items) - 1
            if self._slot > _RELEASE_ABOVE and any(
                not isinstance(item, bytes) or len(item) > _RELEASE_ABOVE for item in items
            ):  # a large message (or a rare one: oversize, fds) touched many pages
                buffer.madvise(mmap.MADV_DONTNEED)
            self._store(batch)
            return self._take(max_fds)
        finally:
            self._receiving = False

    async def _receive_slow(self) -> bytes:
        """``receive()`` when no message received earlier is ready to hand out."""
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
        if self._send_error is not None:
            raise broken(self._send_error) from self._send_error
        if size > self.max_size:
            raise FrameTooLarge(size, self.max_size)

    def _try_queue(self, item: bytes) -> bool:
        """Take a small message to the peer now if that needs no wait (idle, burst, parked)."""
        size = len(item)
        if (
            size > self._batch_largest
            or self._budget <= 0
            or self._sending
            or self._send_error is not None
            or self._eof_sent
            or self._handle.fd < 0
            or len(self._pending) >= SEND_MAX
            or self._pending_bytes >= HIGH_WATER
        ):
            return False
        self._budget -= 1
        if self._flush_handle is None and not self._parked:  # idle: send at once
            try:
                self._sock.send(item)
            except BlockingIOError:
                pass  # the peer is full: pending, and parked below
            except OSError:
                return False  # the unbatched send raises it
            else:
                handle = self._handle
                self._flush_handle = (handle._loop or handle.loop()).call_soon(self._flush)
                return True
        self._pending.append(item)
        self._pending_bytes += size
        if self._flush_handle is None and not self._parked:
            self._flush()
        return True

    def _flush(self) -> None:
        """Send what is pending (end of a burst, or the socket turned writable); park on what is left."""
        self._flush_handle = None
        pending = self._pending
        if pending and self._handle.fd >= 0 and self._send_error is None:
            sent = 0
            try:
                while sent < len(pending):
                    sent += send_batch(self._sock, pending, sent)
            except BlockingIOError:
                pass
            except OSError as exc:
                self._send_error = exc  # the peer is gone: what is pending is dropped
                sent = len(pending)
            if sent == len(pending):
                pending.clear()
                self._pending_bytes = 0
            elif sent:
                self._pending_bytes -= sum(map(len, pending[:sent]))
                del pending[:sent]
        self._watch_if_parked()

    def _watch_if_parked(self) -> None:
        """-> parked (the handle sends more each time the socket turns writable) while messages wait."""
        parked = bool(self._pending) and self._handle.fd >= 0 and self._send_error is None
        if parked != self._parked:
            self._parked = parked
            self._handle.watch_writable(self._flush if parked else None)

    async def _drain(self) -> None:
        """Send what is pending, waiting while the peer is full (cancellable: nothing is lost)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        while self._pending and self._send_error is None and self._handle.fd >= 0:
            await self._handle.wait_writable()  # the parked watcher sends first

    def _drop_pending(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()
        self._pending_bytes = 0
        self._watch_if_parked()

    async def _send_message(self, item: Buffer) -> None:
        """Send one message to the peer: batched when small, else unbatched."""
        if type(item) is not bytes:
            view = byte_view(item)
            if len(view) <= self._batch_largest:
                item = bytes(view)  # pending outlives the call: a copy, as the caller may reuse theirs
        if type(item) is bytes and self._try_queue(item):
            return
        await self._send((item,), [], None)

    async def _send(self, parts: Sequence[Buffer], ancdata: list[tuple[int, int, Any]], address: Any) -> None:
        if self._sending:
            raise anyio.BusyResourceError("sending")
        self._sending = True
        try:
            parts = [part if type(part) is bytes else byte_view(part) for part in parts]
            size = sum(map(len, parts))
            self._check_send(size)
            await self._spend()
            self._budget -= size >> FAIR_SHIFT
            handle = self._handle
            if self._pending or self._flush_handle is not None:
                await self._drain()  # what was said first goes first
                self._check_send(0)
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
        finally:
            self._sending = False

    async def aclose(self) -> None:
        try:
            if self._pending and self._send_error is None and not self._sending:
                await self._drain()
        finally:
            self._drop_pending()
            for item in self._items[self._next :]:
                if isinstance(item, tuple):
                    close_fds(item[1])
            self._items, self._creds, self._addrs, self._next = [], [], None, 0
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
        """Shut down the sending direction: the peer's ``receive()`` raises ``EndOfStream``.

        What earlier sends left pending goes first (this waits while the peer's queue is full).
        """
        if self._handle.fd < 0:
            raise anyio.ClosedResourceError
        if not self._eof_sent:
            if self._pending or self._flush_handle is not None:
                if self._sending:
                    raise anyio.BusyResourceError("sending")
                self._sending = True
                try:
                    await self._drain()  # what was sent before the end goes first
                finally:
                    self._sending = False
            self._eof_sent = True
            self._drop_pending()
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
    received, so the same echo handler works as for connections. Such a
    ``send()`` raises ``OSError`` (``EDESTADDRREQ``) answering an unnamed
    sender or before any message arrived, and ``ConnectionRefusedError``
    when the sender left.

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
        if not connected:
            self._batch_largest = -1  # every send names its address: unbatched
        self._serving = serving

    _want_address = True

    async def _receive_slow(self) -> bytes:
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
                if self._next < len(self._items) and not self._receiving:  # no syscall, no await
                    data, _, address = self._take(0)
                else:
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

    async def _send_message(self, item: Buffer) -> None:
        """Send to the peer (connected), or answer the sender of the last message received."""
        if self._connected:
            await super()._send_message(item)
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
