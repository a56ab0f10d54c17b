"""Socket servers behind ``aioipc.serve()``: an accept loop for stream and
seqpacket listeners, one handler call for a datagram socket.

Binding (:func:`listen`) and serving a listening socket (:func:`serve_listener`)
are separate steps, so a socket that arrives already listening (socket
activation) is served the same way.

Rule 1: the accept loop never calls ``accept()`` beyond ``max_connections``
live handlers: extra clients wait in the kernel's backlog, not in memory.
Rule 2: everything a connection needs before its handler runs that can
wait (the TLS handshake) happens in the connection's own task; the rest is
a plain syscall (credential check) or builds objects (framing), so a slow
or hostile client cannot stall the accept loop.
Rule 3: a connection costs what its handler holds and no more: one task,
the socket's stream, and the handler's frame (no per-connection closures,
no wrapping coroutine unless TLS needs one, a timer only with
``idle_timeout``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .._core.schemes import Address, Framing
from .._core.server import Server
from .._core.streams import FAIR_OPS, fair_yield, framed
from ._base import KINDS, SocketHandle, UnixPath, bind_unix, peer_credentials
from ._idle import IdleWatch
from ._message import DatagramStream, SeqpacketStream
from ._stream import SocketStream

__all__ = ["Listening", "listen", "serve_connections", "serve_datagram", "serve_listener", "tcp_address"]

logger = logging.getLogger("aioipc")

Handler = Callable[[Any], Awaitable[object]]

_RETRY_ACCEPT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR})
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Fairness budget units one accepted connection spends: accepting, admitting and starting its
# handler is ~90 us of work against ~1 us a message (measured under a connect flood), so a flood
# yields every FAIR_OPS // 128 = 8 accepts, well under a millisecond apart.
_ACCEPT_UNITS = 128


def tcp_address(scheme: str, sockaddr: tuple[Any, ...]) -> str:
    """``tcp:host:port`` for a socket address (``[v6]:port`` for IPv6)."""
    return str(Address(scheme, host=sockaddr[0], port=sockaddr[1]))


async def _bind_inet(address: Address, kind: int) -> socket.socket:
    infos = await asyncio.get_running_loop().getaddrinfo(
        address.host, address.port, type=kind, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {address.host!r}")
    family, _, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _bind_unix(
    address: Address, kind: int, mode: int, backlog: int | None
) -> tuple[socket.socket, UnixPath | None]:
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        return sock, await bind_unix(sock, address.path, mode, backlog=backlog)
    except BaseException:
        sock.close()
        raise


class Listening:
    """A bound, listening socket, and the socket file it created (removed on :meth:`close`).

    Attributes:
        handle: owns the listening socket.
        address: in address syntax (the real port for ``tcp:HOST:0``).
    """

    def __init__(self, sock: socket.socket, address: str, owned: UnixPath | None = None) -> None:
        self.handle = SocketHandle(sock)
        self.address = address
        self._owned = owned

    def close(self) -> None:
        """Stop listening (idempotent); remove the socket file if this process created it."""
        self.handle.close()
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.remove()


async def listen(
    address: Address, *, mode: int = 0o600, backlog: int = socket.SOMAXCONN, persist: bool = False
) -> Listening:
    """Bind ``address`` (``unix:``, ``unix+seqpacket:`` or ``tcp:``) and listen.

    Raises:
        AddressInUse: a live server owns the address (never stolen).
    """
    if address.scheme == "tcp":
        sock = await _bind_inet(address, socket.SOCK_STREAM)
        try:
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return Listening(sock, tcp_address("tcp", sock.getsockname()))
    kind = KINDS["seqpacket" if address.scheme == "unix+seqpacket" else "stream"]
    sock, owned = await _bind_unix(address, kind, mode, backlog)
    return Listening(sock, str(address), None if persist else owned)


@dataclass
class _Acceptor:
    """The accept loop of one listener and the setup of each connection (the server's body)."""

    listening: Listening
    handler: Handler
    framing: Framing
    max_size: int
    slots: anyio.Semaphore | None
    allowed_uids: frozenset[int] | None
    ssl: _ssl.SSLContext | None
    handshake_timeout: float
    nodelay: bool
    idle_timeout: float | None

    def __post_init__(self) -> None:
        # What every connection shares, made once: the path its streams report,
        # the slot it gives back when it ends, and what runs the handler.
        self._path = self.listening.address.partition(":")[2]
        self._release = None if self.slots is None else self.slots.release
        self._handler = self.handler if self.ssl is None else self._run

    async def serve(self, server: Server) -> None:
        """Accept until cancelled (:meth:`Server.close`), starting a handler per connection."""
        budget = FAIR_OPS
        try:
            while True:
                if self.slots is not None:
                    await self.slots.acquire()  # a checkpoint each time
                elif budget <= 0:  # a connect flood yields like any other flood
                    await fair_yield()
                    budget = FAIR_OPS
                budget -= _ACCEPT_UNITS
                conn = await self._accept()
                try:
                    stream = self._admit(conn)
                except Exception:
                    logger.exception("%s: could not start a connection", self.listening.address)
                    stream = None
                if stream is None:
                    if self._release is not None:
                        self._release()
                elif self.idle_timeout is None:
                    server.start_handler(self._handler, stream, self._release)
                else:  # the watch is the handler's stream (under TLS: the transport TLS wraps)
                    watch = IdleWatch(stream, self.idle_timeout, self.listening.address)
                    watch.start(server, server.start_handler(self._handler, watch, self._release))
        finally:
            self.listening.close()

    async def _accept(self) -> socket.socket:
        listener = self.listening.handle
        while True:
            try:
                conn, _ = listener.sock.accept()
                return conn
            except BlockingIOError:
                await listener.wait_readable()
            except OSError as exc:
                if exc.errno in _RETRY_ACCEPT:
                    continue
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                logger.warning(
                    "%s: accept failed (%s); retrying in 0.1 s", self.listening.address, exc.strerror
                )
                await anyio.sleep(0.1)

    def _admit(self, conn: socket.socket) -> Any:
        """The stream of an accepted connection, or ``None`` when its peer is refused (closed).

        Framed here unless TLS comes first (then :meth:`_run` frames it after the handshake).
        """
        try:
            if self.allowed_uids is not None:
                try:
                    uid = peer_credentials(conn).uid
                except anyio.TypedAttributeLookupError:
                    uid = -1
                if uid not in self.allowed_uids:
                    logger.warning(
                        "%s: refused a connection from uid %d (not in allowed_uids)",
                        self.listening.address,
                        uid,
                    )
                    conn.close()
                    return None
            if conn.family != socket.AF_UNIX:
                if self.nodelay:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                stream = SocketStream(SocketHandle(conn))
            elif conn.type == socket.SOCK_SEQPACKET:
                return SeqpacketStream(SocketHandle(conn), max_size=self.max_size, path=self._path)
            else:
                stream = SocketStream(SocketHandle(conn), path=self._path)
        except BaseException:
            conn.close()
            raise
        if self.framing is None or self.ssl is not None:
            return stream
        return framed(stream, self.max_size, framing=self.framing)

    async def _run(self, raw: Any) -> None:
        """The TLS handshake, then framing, around one handler call (in the connection's task)."""
        stream = raw
        try:
            with anyio.fail_after(self.handshake_timeout):
                stream = await TLSStream.wrap(
                    raw, server_side=True, ssl_context=self.ssl, standard_compatible=False
                )
            if self.framing is not None:
                stream = framed(stream, self.max_size, framing=self.framing)
            await self.handler(stream)
        finally:
            if stream is not raw:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()  # TLS: not standard-compatible, so it does not wait for the peer


def _check_options(address: Address, *, allowed_uids: object, ssl: object) -> None:
    if address.scheme in ("tcp", "udp") and allowed_uids is not None:
        raise ValueError("allowed_uids needs a Unix socket: TCP and UDP peers have no credentials")
    if address.scheme != "tcp" and ssl is not None:
        raise ValueError("ssl is only for tcp: addresses")


def serve_listener(
    listening: Listening,
    handler: Handler,
    *,
    framing: Framing,
    max_size: int,
    max_connections: int | None = None,
    allowed_uids: Collection[int] | None = None,
    ssl: _ssl.SSLContext | None = None,
    handshake_timeout: float = 30,
    nodelay: bool = True,
    idle_timeout: float | None = None,
) -> Server:
    """Serve each connection of a listening socket with ``handler``; the server owns ``listening``.

    Raises:
        ValueError: ``max_connections`` or ``idle_timeout`` out of range.
    """
    if max_connections is not None and max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError("idle_timeout must be a positive number of seconds (or None)")
    acceptor = _Acceptor(
        listening,
        handler,
        framing=framing,
        max_size=max_size,
        slots=None if max_connections is None else anyio.Semaphore(max_connections),
        allowed_uids=None if allowed_uids is None else frozenset(allowed_uids),
        ssl=ssl,
        handshake_timeout=handshake_timeout,
        nodelay=nodelay,
        idle_timeout=idle_timeout,
    )

    async def stop_listening() -> None:  # in case the server closed before its body ran
        listening.close()

    return Server.start(listening.address, acceptor.serve, on_close=stop_listening)


async def serve_connections(
    address: Address,
    handler: Handler,
    *,
    mode: int = 0o600,
    backlog: int = socket.SOMAXCONN,
    persist: bool = False,
    allowed_uids: Collection[int] | None = None,
    ssl: _ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
    **options: Any,
) -> Server:
    """Listen on a ``unix:``, ``unix+seqpacket:`` or ``tcp:`` address and serve each connection.

    With ``sock``, a socket already listening at ``address`` (inherited, say),
    nothing is bound: that socket is served, and no file is removed on close.
    """
    _check_options(address, allowed_uids=allowed_uids, ssl=ssl)
    if sock is not None:
        bound = tcp_address("tcp", sock.getsockname()) if address.scheme == "tcp" else str(address)
        listening = Listening(sock, bound)
    else:
        listening = await listen(address, mode=mode, backlog=backlog, persist=persist)
    try:
        return serve_listener(listening, handler, allowed_uids=allowed_uids, ssl=ssl, **options)
    except BaseException:
        listening.close()
        raise


async def serve_datagram(
    address: Address,
    handler: Handler,
    *,
    framing: Framing,
    max_size: int,
    mode: int = 0o600,
    persist: bool = False,
    sock: socket.socket | None = None,
) -> Server:
    """Bind a ``unix+dgram:`` or ``udp:`` address and call ``handler`` once with its socket.

    With ``sock``, a socket already bound at ``address``, that socket is
    served, and no file is removed on close.

    The handler's stream is a serving one: a reply that cannot reach its
    sender and a datagram over ``max_size`` are logged and dropped, so one
    sender cannot end the server.
    """
    del framing  # datagrams keep their own boundaries
    owned: UnixPath | None = None
    if address.scheme == "udp":
        if sock is None:
            sock = await _bind_inet(address, socket.SOCK_DGRAM)
        bound = tcp_address("udp", sock.getsockname())
        path = None
    else:
        if sock is None:
            sock, owned = await _bind_unix(address, socket.SOCK_DGRAM, mode, None)
        bound, path = str(address), address.path
    stream = DatagramStream(SocketHandle(sock), max_size=max_size, path=path, connected=False, serving=True)

    async def on_close() -> None:
        await stream.aclose()
        if owned is not None and not persist:
            owned.remove()

    return Server.single(bound, handler, stream, on_close=on_close)
