"""Socket servers behind ``aioipc.serve()``: accept loops for stream and
seqpacket sockets, one handler call for a datagram socket.

Rule 1: the accept loop never calls ``accept()`` beyond ``max_connections``
live handlers: extra clients wait in the kernel's backlog, not in memory.
Rule 2: everything a connection needs before its handler runs (credential
check, TLS handshake, framing) happens in its own task or is a plain
syscall, so a slow or hostile client cannot stall the accept loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .._core.schemes import Address, Framing
from .._core.server import Server
from .._core.streams import framed
from ._base import KINDS, SocketHandle, UnixPath, bind_unix, format_unix, peer_credentials
from ._message import DatagramStream, MessageSocket, SeqpacketStream
from ._stream import SocketStream

__all__ = ["serve_datagram", "serve_connections", "tcp_address"]

logger = logging.getLogger("aioipc")

Handler = Callable[[Any], Awaitable[object]]

_RETRY_ACCEPT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR})
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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


def _bind_unix(address: Address, kind: int, mode: int) -> tuple[socket.socket, UnixPath | None]:
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        return sock, bind_unix(sock, address.path, mode)
    except BaseException:
        sock.close()
        raise


def _check_options(address: Address, *, allowed_uids: object, ssl: object) -> None:
    if address.scheme in ("tcp", "udp") and allowed_uids is not None:
        raise ValueError("allowed_uids needs a Unix socket: TCP and UDP peers have no credentials")
    if address.scheme != "tcp" and ssl is not None:
        raise ValueError("ssl is only for tcp: addresses")


async def serve_connections(
    address: Address,
    handler: Handler,
    *,
    framing: Framing,
    max_size: int,
    mode: int = 0o600,
    max_connections: int | None = None,
    allowed_uids: Collection[int] | None = None,
    backlog: int = socket.SOMAXCONN,
    ssl: _ssl.SSLContext | None = None,
    handshake_timeout: float = 30,
    nodelay: bool = True,
    persist: bool = False,
    sock: socket.socket | None = None,
) -> Server:
    """Listen on a ``unix:``, ``unix+seqpacket:`` or ``tcp:`` address and serve each connection.

    With ``sock``, a socket already listening at ``address`` (inherited, say),
    nothing is bound: that socket is served, and no file is removed on close.
    """
    _check_options(address, allowed_uids=allowed_uids, ssl=ssl)
    if max_connections is not None and max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    uids = None if allowed_uids is None else frozenset(allowed_uids)
    seqpacket = address.scheme == "unix+seqpacket"
    tcp = address.scheme == "tcp"
    owned: UnixPath | None = None
    inherited = sock is not None
    if sock is None and tcp:
        sock = await _bind_inet(address, socket.SOCK_STREAM)
    elif sock is None:
        sock, owned = _bind_unix(address, KINDS["seqpacket" if seqpacket else "stream"], mode)
    listener = SocketHandle(sock)
    try:
        if not inherited:
            sock.listen(backlog)
        bound = tcp_address("tcp", sock.getsockname()) if tcp else str(address)
    except BaseException:
        listener.close()
        if owned is not None:
            owned.remove()
        raise
    path = None if tcp else format_unix(sock.getsockname())
    slots = asyncio.Semaphore(max_connections) if max_connections is not None else None

    async def run_connection(raw: SocketStream | SeqpacketStream) -> None:
        try:
            stream: Any = raw
            if ssl is not None:
                with anyio.fail_after(handshake_timeout):
                    stream = await TLSStream.wrap(
                        raw, server_side=True, ssl_context=ssl, standard_compatible=False
                    )
            if framing is not None and not seqpacket:
                stream = framed(stream, max_size, framing=framing)
            try:
                await handler(stream)
            finally:
                if stream is not raw:
                    with anyio.CancelScope(shield=True):
                        await anyio.aclose_forcefully(stream)
        finally:
            if slots is not None:
                slots.release()

    def start(conn: socket.socket) -> None:
        try:
            if uids is not None:
                try:
                    uid = peer_credentials(conn).uid
                except anyio.TypedAttributeLookupError:
                    uid = -1
                if uid not in uids:
                    logger.warning("%s: refused a connection from uid %d (not in allowed_uids)", bound, uid)
                    conn.close()
                    if slots is not None:
                        slots.release()
                    return
            if tcp and nodelay:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handle = SocketHandle(conn)
        except BaseException:
            conn.close()
            if slots is not None:
                slots.release()
            raise
        raw: SocketStream | SeqpacketStream = (
            SeqpacketStream(handle, max_size=max_size, path=path)
            if seqpacket
            else SocketStream(handle, path=path)
        )
        server.start_handler(run_connection, raw)

    async def accept_loop() -> None:
        while True:
            if slots is not None:
                await slots.acquire()
            while True:
                try:
                    conn, _ = sock.accept()
                    break
                except BlockingIOError:
                    await listener.wait_readable()
                except OSError as exc:
                    if exc.errno in _RETRY_ACCEPT:
                        continue
                    if exc.errno not in _OUT_OF_RESOURCES:
                        raise
                    logger.warning("%s: accept failed (%s); retrying in 0.1 s", bound, exc.strerror)
                    await anyio.sleep(0.1)
            try:
                start(conn)
            except Exception:
                logger.exception("%s: could not start a connection", bound)

    async def stop_accepting() -> None:
        accepting.cancel()
        try:
            await accepting
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s: the accept loop failed", bound)
        finally:
            listener.close()
            if owned is not None and not persist:
                owned.remove()

    server = Server(bound, stop_accepting=stop_accepting)
    accepting = asyncio.get_running_loop().create_task(accept_loop())
    return server


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
            sock, owned = _bind_unix(address, socket.SOCK_DGRAM, mode)
        bound, path = str(address), address.path
    stream: MessageSocket = DatagramStream(SocketHandle(sock), max_size=max_size, path=path, connected=False)

    async def on_close() -> None:
        await stream.aclose()
        if owned is not None and not persist:
            owned.remove()

    server = Server(bound, on_close=on_close)
    server.start_handler(handler, stream)
    return server
