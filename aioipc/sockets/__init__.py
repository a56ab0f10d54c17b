"""Unix and network sockets as async streams: stream, seqpacket and datagram
Unix sockets (paths and abstract ``@names``), TCP (optionally TLS) and UDP.

Through the front door::

    msgs = await aioipc.connect("unix:/run/app.sock")          # framed messages
    raw = await aioipc.connect("tcp:127.0.0.1:8080", framing=None)
    server = await aioipc.serve("unix+seqpacket:@app", handler, max_connections=100)

The default ``unix:`` stream (a :class:`FramedUnixStream`) carries file
descriptors with messages: ``await msgs.send_fds(b"log", [fd])`` on one
side, ``message, fds = await msgs.receive_fds()`` on the other.

Or directly, with typed results::

    stream = await aioipc.sockets.connect_unix("/run/app.sock")      # SocketStream
    await stream.send_fds(b"x", [fd])                                # SCM_RIGHTS
    creds = stream.extra(aioipc.PeerCredentials)                     # (pid, uid, gid)

``aioipc.serve()`` options for sockets:

- ``mode=0o600``: the socket file's permissions, set before it is reachable.
- ``max_connections``: live handlers at most; more clients wait in the backlog.
- ``idle_timeout``: seconds without a receive or send after which a
  connection is closed (logged on the ``aioipc`` logger). Default ``None``.
- ``allowed_uids``: Unix only; other users' connections are closed at once.
  Without it an abstract ``@name``, which has no file and so no mode,
  accepts a connection from every local uid.
- ``ssl``: an ``ssl.SSLContext`` (tcp only): each connection is TLS
  (``handshake_timeout`` seconds to complete the handshake).
- ``nodelay=True``: ``TCP_NODELAY`` on TCP connections.
- ``persist=False``: keep the socket file after close when ``True``.
- ``backlog``: the listen backlog.

What the defaults protect against: with no ``max_connections``, idle
clients cannot lock anyone out; each costs the server an fd and some
memory (``benchmarks/bench_idle.py`` measures it), and accepting stops
only at the process's fd limit (then ``accept`` is retried every 0.1 s).
With ``max_connections`` set, that many clients that connect and never
send hold every slot for as long as they stay, so set ``idle_timeout``
with it. A handler that raises, a bad frame, or a
TLS handshake slower than ``handshake_timeout`` ends only that connection.

Caveats:
    A socket file already present is probed: if nobody accepts there it is
    stale and replaced, if a server answers, ``AddressInUse`` (it is never
    stolen). The server removes its socket file on close only while it is
    still the file it bound. Concurrent starts on one path in one
    directory are serialized (``flock`` on the directory), so exactly one
    wins even among many processes. Abstract names need no cleanup and have no
    permissions: any local process may connect (check credentials with
    ``allowed_uids``). Linux only.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl as _ssl
import stat
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from anyio.streams.tls import TLSStream

from .._core import leftovers
from .._core.framing import DEFAULT_MAX_SIZE
from .._core.schemes import Address, Framing
from .._core.server import Server
from ._base import KINDS, SocketHandle, connect_socket, format_unix, unix_sockaddr
from ._message import DatagramStream, SeqpacketStream
from ._server import Handler, serve_connections, serve_datagram
from ._stream import FdsTruncated, FramedUnixStream, SocketReceiveStream, SocketSendStream, SocketStream

__all__ = [
    "DatagramStream",
    "FdsTruncated",
    "FramedUnixStream",
    "Kind",
    "SeqpacketStream",
    "SocketReceiveStream",
    "SocketSendStream",
    "SocketStream",
    "connect_tcp",
    "connect_udp",
    "connect_unix",
    "connect_unix_datagram",
    "connect_unix_seqpacket",
    "from_socket",
    "serve_socket",
    "socketpair",
]

Kind = Literal["stream", "dgram", "seqpacket"]


def _unix_socket(kind: Kind) -> socket.socket:
    return socket.socket(socket.AF_UNIX, KINDS[kind] | socket.SOCK_CLOEXEC)


async def connect_unix(path: str, *, timeout: float | None = None) -> SocketStream:
    """Connect to a Unix stream socket at ``path`` (``@name``: abstract namespace).

    Raises:
        FileNotFoundError: no socket file at ``path``.
        ConnectionRefusedError: a stale socket file, or nobody bound the abstract name.
        PermissionError: the socket file is not writable for this user.
        TimeoutError: the server's backlog stayed full for ``timeout`` seconds.

    Example::

        async with await aioipc.sockets.connect_unix("/run/app.sock") as stream:
            await stream.send(b"GET\n")
            reply = await stream.receive()
    """
    handle = await connect_socket(_unix_socket("stream"), unix_sockaddr(path), timeout)
    return SocketStream(handle, path=path)


async def connect_unix_seqpacket(
    path: str, *, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None
) -> SeqpacketStream:
    """Connect to a Unix ``SOCK_SEQPACKET`` socket: a message stream with native boundaries.

    Raises:
        As :func:`connect_unix`.
    """
    handle = await connect_socket(_unix_socket("seqpacket"), unix_sockaddr(path), timeout)
    return SeqpacketStream(handle, max_size=max_size, path=path)


async def connect_unix_datagram(
    path: str, *, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None
) -> DatagramStream:
    """A Unix datagram socket connected to ``path``, with an automatic abstract address for replies.

    Raises:
        FileNotFoundError, ConnectionRefusedError, PermissionError: as for :func:`connect_unix`.
    """
    sock = _unix_socket("dgram")
    try:
        sock.bind("")  # autobind: an abstract address the server can answer to
    except BaseException:
        sock.close()
        raise
    handle = await connect_socket(sock, unix_sockaddr(path), timeout)
    return DatagramStream(handle, max_size=max_size, path=path)


async def _resolve(host: str, port: int, kind: int) -> list[tuple[Any, ...]]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=kind)
    if not infos:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}")
    return [(family, proto, sockaddr) for family, _, proto, _, sockaddr in infos]


async def connect_tcp(
    host: str,
    port: int,
    *,
    nodelay: bool = True,
    ssl: _ssl.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    timeout: float | None = None,
) -> SocketStream | TLSStream:
    """Connect to a TCP server, trying each address ``host`` resolves to.

    Args:
        nodelay: set ``TCP_NODELAY`` (small messages go out at once; sends
            are coalesced per loop iteration anyway).
        ssl: an ``ssl.SSLContext`` (or ``True`` for the default context) to
            speak TLS: the result is then an anyio ``TLSStream``.
        server_hostname: the name to check the certificate against (default ``host``).

    Raises:
        ConnectionRefusedError: nobody listens there.
        TimeoutError: no connection within ``timeout`` seconds (TLS handshake included).
        ssl.SSLError: the TLS handshake failed.
    """
    error: OSError | None = None
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    for family, proto, sockaddr in await _resolve(host, port, socket.SOCK_STREAM):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, proto)
        left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            handle = await connect_socket(sock, sockaddr, left)
        except TimeoutError:
            raise
        except OSError as exc:
            error = exc
            continue
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = SocketStream(handle)
        if not ssl:
            return stream
        context = _ssl.create_default_context() if ssl is True else ssl
        try:
            left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
            async with asyncio.timeout(left):
                return await TLSStream.wrap(
                    stream, hostname=server_hostname or host, ssl_context=context, standard_compatible=False
                )
        except BaseException:
            await stream.aclose()
            raise
    assert error is not None
    raise error


async def connect_udp(
    host: str, port: int, *, max_size: int = 65507, timeout: float | None = None
) -> DatagramStream:
    """A UDP socket connected to ``host:port`` (see :class:`DatagramStream` for the caveats).

    Raises:
        OSError: the name does not resolve.
    """
    family, proto, sockaddr = (await _resolve(host, port, socket.SOCK_DGRAM))[0]
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, proto)
    handle = await connect_socket(sock, sockaddr, timeout)
    return DatagramStream(handle, max_size=max_size)


def socketpair(kind: Kind = "stream", *, max_size: int = DEFAULT_MAX_SIZE) -> tuple[Any, Any]:
    """Two connected Unix sockets: ``SocketStream``s, ``SeqpacketStream``s or ``DatagramStream``s.

    Hand one end to a child with ``pass_fds`` and open it there with
    :func:`from_socket` (``socket.socket(fileno=fd)``).

    Raises:
        ValueError: an unknown ``kind``.

    Example::

        parent, child = aioipc.sockets.socketpair("seqpacket")
        proc = subprocess.Popen([sys.executable, "child.py", str(child.fileno())], pass_fds=[child.fileno()])
        await child.aclose()
        await parent.send_fds(b"log file", [log_fd])
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'stream', 'dgram' or 'seqpacket', not {kind!r}")
    a, b = socket.socketpair(socket.AF_UNIX, KINDS[kind] | socket.SOCK_CLOEXEC)
    return from_socket(a, max_size=max_size), from_socket(b, max_size=max_size)


def from_socket(sock: socket.socket, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Wrap a connected socket (e.g. inherited, or from systemd) as the stream of its kind.

    The stream owns the socket from then on. Stream sockets give a
    :class:`SocketStream`, seqpacket a :class:`SeqpacketStream`, datagram a
    :class:`DatagramStream` (connected, or only bound: then it answers with
    ``send_to()``, or ``send()`` to the last sender).

    Raises:
        ValueError: a listening socket, or a type aioipc does not handle (raw sockets ...).
    """
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("a listening socket has no peer to stream with; serve it instead")
    kind = sock.type & ~(socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        peer = sock.getpeername()
    except OSError:  # not connected: a bound datagram socket
        peer = None
    path = format_unix(peer) or None if peer is not None and sock.family == socket.AF_UNIX else None
    if kind == socket.SOCK_STREAM:
        return SocketStream(SocketHandle(sock), path=path)
    if kind == socket.SOCK_SEQPACKET and sock.family == socket.AF_UNIX:
        return SeqpacketStream(SocketHandle(sock), max_size=max_size, path=path)
    if kind == socket.SOCK_DGRAM:
        return DatagramStream(SocketHandle(sock), max_size=max_size, path=path, connected=peer is not None)
    raise ValueError(f"cannot make a stream of a socket of type {sock.type!r}")


def remove_address(address: Address) -> None:
    """``aioipc rm unix:/path``: remove a socket file (never anything that is not a socket).

    Raises:
        FileNotFoundError: nothing there.
        ValueError: an abstract name (nothing to remove), or the path is not a socket: left alone.
    """
    if address.abstract:
        raise ValueError(f"{address} is an abstract name: it goes away with its socket, nothing to remove")
    if not stat.S_ISSOCK(os.lstat(address.path).st_mode):
        raise ValueError(f"{address.path} is not a socket; left alone")
    os.unlink(address.path)
    leftovers.forget("unix", address.path)


_UNIX_SCHEMES: dict[int, str] = {
    KINDS["stream"]: "unix",
    KINDS["seqpacket"]: "unix+seqpacket",
    KINDS["dgram"]: "unix+dgram",
}


def _listening_address(sock: socket.socket) -> Address:
    """The address a bound socket serves, in address syntax (``unix:/path``, ``tcp:host:port`` ...)."""
    kind = sock.type & ~(socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    if sock.family == socket.AF_UNIX and kind in _UNIX_SCHEMES:
        return Address(_UNIX_SCHEMES[kind], path=format_unix(sock.getsockname()))
    if sock.family in (socket.AF_INET, socket.AF_INET6) and kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        host, port = sock.getsockname()[:2]
        return Address("tcp" if kind == socket.SOCK_STREAM else "udp", host=host, port=port)
    raise ValueError(f"cannot serve a socket of family {sock.family!r} and type {sock.type!r}")


async def serve_socket(
    sock: socket.socket,
    handler: Handler,
    *,
    framing: Framing = "length",
    max_size: int = DEFAULT_MAX_SIZE,
    **options: Any,
) -> Server:
    """Serve a socket that is already bound (inherited from systemd or a parent), as ``aioipc.serve()`` would.

    A listening stream or seqpacket socket gets one ``handler`` call per
    connection; a bound datagram socket one call with its message stream.
    The server owns the socket from then on and closes it on close; it
    never removes a socket file (whoever bound it owns that). If this
    raises, the socket is still the caller's.

    Args:
        framing, max_size, options: as for ``aioipc.serve()`` with this
            socket's address (``max_connections``, ``allowed_uids``,
            ``ssl`` ...); none that bind (``mode``, ``backlog``, ``persist``).

    Raises:
        ValueError: a stream or seqpacket socket that is not listening (a
            connection: wrap it with :func:`from_socket`), or a family or
            type aioipc does not serve.
        TypeError: an option that binds, or one this kind of socket lacks.

    Example::

        sock = socket.socket(fileno=3)          # a listening socket inherited on fd 3
        async with await aioipc.sockets.serve_socket(sock, handler) as server:
            await server.serve_forever()
    """
    for option in ("mode", "backlog", "persist", "sock"):
        if option in options:
            raise TypeError(f"serve_socket() serves a bound socket: {option}= does not apply")
    address = _listening_address(sock)
    starter: Callable[..., Awaitable[Server]] = serve_connections
    if address.scheme in ("unix+dgram", "udp"):
        starter = serve_datagram
    elif not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError(f"the {address} socket is not listening: wrap a connection with from_socket()")
    return await starter(address, handler, framing=framing, max_size=max_size, sock=sock, **options)


async def connect_address(
    address: Address, *, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None, **options: Any
) -> Any:
    """``connect()`` for the socket schemes: the raw stream (the core frames byte streams)."""
    scheme = address.scheme
    if scheme == "unix":
        return await connect_unix(address.path, timeout=timeout)
    if scheme == "tcp":
        return await connect_tcp(address.host, address.port, timeout=timeout, **options)
    if scheme == "unix+seqpacket":
        return await connect_unix_seqpacket(address.path, max_size=max_size, timeout=timeout)
    if scheme == "unix+dgram":
        return await connect_unix_datagram(address.path, max_size=max_size, timeout=timeout)
    return await connect_udp(address.host, address.port, max_size=min(max_size, 65507), timeout=timeout)


async def serve_address(
    address: Address,
    handler: Handler,
    *,
    framing: Framing,
    max_size: int = DEFAULT_MAX_SIZE,
    **options: Any,
) -> Server:
    if address.scheme in ("unix+dgram", "udp"):
        return await serve_datagram(address, handler, framing=framing, max_size=max_size, **options)
    return await serve_connections(address, handler, framing=framing, max_size=max_size, **options)
