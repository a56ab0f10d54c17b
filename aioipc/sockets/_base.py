"""Socket plumbing shared by the socket streams and servers: the fd owner,
addresses, credentials, non-blocking connect, and safe binding of Unix socket files.

Rule 1: a socket file is never reachable with looser permissions than asked:
the mode is set on the socket inode (``fchmod``) before ``bind`` creates the file.
Rule 2: an address in use is probed, never blindly unlinked: a refused
connect means a stale file (replaced), anything else a live server (``AddressInUse``).
Rule 3: bind, probe, reclaim and listen happen under one ``flock`` on the
socket's directory, so a probe never mistakes a server that has bound but
not yet listened for a stale file: of many concurrent starts, one wins.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from .._core import leftovers
from .._core.attributes import UCRED, IPCAttribute, PeerCredentials
from .._core.errors import AddressInUse
from .._core.fdstreams import FdHandle

__all__ = [
    "KINDS",
    "SocketHandle",
    "UnixPath",
    "bind_unix",
    "connect_socket",
    "format_unix",
    "peer_credentials",
    "shutdown_write",
    "socket_extra",
    "unix_sockaddr",
]

_MAX_BACKOFF = 0.05
_LOCK_BACKOFF = 0.002  # the lock is held for a few syscalls

#: the socket type of each Unix socket kind
KINDS = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}


class SocketHandle(FdHandle):
    """An :class:`FdHandle` that also keeps the ``socket.socket`` for ``sendmsg``/``recvmsg``."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        super().__init__(sock.fileno())
        self.sock = sock

    def detach(self) -> int:
        fd = super().detach()
        self.sock.detach()
        return fd

    def close(self) -> None:
        if self.fd >= 0:
            self.sock.detach()  # the handle closes the fd, once
        super().close()

    def __del__(self) -> None:
        if self.fd >= 0:
            self.sock.detach()
        super().__del__()


def unix_sockaddr(path: str) -> str:
    """The ``socket`` module's address for ``path``; ``@name`` is an abstract name."""
    return "\0" + path[1:] if path.startswith("@") else path


def format_unix(sockaddr: str | bytes) -> str:
    """The address syntax path (``@name`` for abstract) of a Unix socket address."""
    if isinstance(sockaddr, bytes):
        sockaddr = os.fsdecode(sockaddr)
    return "@" + sockaddr[1:] if sockaddr.startswith("\0") else sockaddr


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The peer's ``(pid, uid, gid)`` from ``SO_PEERCRED``.

    Raises:
        anyio.TypedAttributeLookupError: the kernel does not know the peer
            (a datagram socket that was only ``connect()``-ed).
    """
    creds = PeerCredentials.from_ucred(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
    if creds.pid <= 0:
        raise anyio.TypedAttributeLookupError("the kernel has no credentials for this peer")
    return creds


def socket_extra(sock: socket.socket, path: str | None = None) -> dict[Any, Callable[[], Any]]:
    """Extra attribute getters of a socket stream: path and peer credentials (Unix)."""
    attrs: dict[Any, Callable[[], Any]] = {}
    if path is not None:
        attrs[IPCAttribute.path] = lambda: path
    if sock.family == socket.AF_UNIX:
        cache: list[PeerCredentials] = []

        def creds() -> PeerCredentials:
            if not cache:
                cache.append(peer_credentials(sock))
            return cache[0]

        attrs[IPCAttribute.peer_credentials] = creds
        attrs[PeerCredentials] = creds
    return attrs


def shutdown_write(fd: int) -> None:
    """Shut a stream socket down for writing (its ``send_eof``): the peer reads the end, may still answer."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()


async def connect_socket(sock: socket.socket, sockaddr: Any, timeout: float | None) -> SocketHandle:
    """Connect a non-blocking socket without blocking the loop; the handle owns it.

    A Unix listener with a full backlog answers ``EAGAIN``: retried with a
    short backoff until ``timeout``.

    Raises:
        TimeoutError: not connected within ``timeout`` (the socket is closed).
        OSError: as ``connect`` fails (``FileNotFoundError``, ``ConnectionRefusedError`` ...).
    """
    handle = SocketHandle(sock)
    delay = 0.001
    try:
        with anyio.fail_after(timeout):
            while True:
                code = sock.connect_ex(sockaddr)
                if code in (0, errno.EISCONN):
                    return handle
                if code == errno.EINPROGRESS:
                    await handle.wait_writable()
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        return handle
                if code != errno.EAGAIN:
                    shown = format_unix(sockaddr) if isinstance(sockaddr, str | bytes) else sockaddr
                    raise OSError(code, os.strerror(code), shown)  # abstract names shown as @name
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
    except BaseException:
        handle.close()
        raise


def _live(path: str, kind: int) -> bool:
    """Probe-connect ``path``: ``False`` only when the kernel refuses (a stale socket file)."""
    with socket.socket(socket.AF_UNIX, kind) as probe:
        probe.setblocking(False)
        code = probe.connect_ex(path)
    return code != errno.ECONNREFUSED


class UnixPath:
    """A Unix socket file this process bound; :meth:`remove` unlinks it only if it is still ours."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)  # still right if the process changes directory
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
                leftovers.forget("unix", self.path)
        except FileNotFoundError:
            pass


def _open_directory_of(path: str) -> int:
    return os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@asynccontextmanager
async def _reclaim_lock(path: str) -> AsyncIterator[None]:
    """Serialize binding in ``path``'s directory among aioipc processes (``flock`` on the directory).

    Held from ``bind`` to ``listen``, so that a probe under the lock never
    sees another server's socket bound but not yet listening (which would
    refuse, and look stale). Not taken where the directory cannot be opened.
    """
    try:
        fd = _open_directory_of(path)
    except OSError:
        yield
        return
    try:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await anyio.sleep(delay)
                delay = min(delay * 2, _LOCK_BACKOFF)
        yield
    finally:
        os.close(fd)  # releases the lock


def _bind_abstract(sock: socket.socket, path: str, backlog: int | None) -> None:
    try:
        sock.bind(unix_sockaddr(path))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(f"unix:{path}") from None
        raise
    if backlog is not None:
        sock.listen(backlog)


async def bind_unix(
    sock: socket.socket, path: str, mode: int = 0o600, *, backlog: int | None = None
) -> UnixPath | None:
    """Bind a Unix socket to ``path`` (or an abstract ``@name``), replacing only a stale file.

    The file gets exactly ``mode`` and is never looser, not even briefly:
    the mode is set on the socket before ``bind`` creates the file (the
    umask may make it stricter for an instant, never looser). With
    ``backlog``, the socket also listens before the directory lock is
    released, so concurrent starts on one path elect exactly one server.

    Returns:
        the bound file (to remove on close), or ``None`` for an abstract name.

    Raises:
        AddressInUse: a live server listens there (probe connect accepted).
        FileExistsError: ``path`` exists and is not a socket.
    """
    if path.startswith("@"):
        _bind_abstract(sock, path, backlog)
        return None
    os.fchmod(sock.fileno(), mode)
    async with _reclaim_lock(path):
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None  # it went away meanwhile: bind again
            if st is not None:
                if not stat.S_ISSOCK(st.st_mode):
                    raise FileExistsError(errno.EEXIST, "exists and is not a socket", path) from None
                if _live(path, sock.type):
                    raise AddressInUse(f"unix:{path}") from None
                try:
                    os.unlink(path)  # stale: nobody accepts there
                except FileNotFoundError:
                    pass
            try:
                sock.bind(path)
            except OSError as again:
                if again.errno == errno.EADDRINUSE:  # a server that binds without the lock
                    raise AddressInUse(f"unix:{path}") from None
                raise
        owned = UnixPath(path)
        leftovers.note("unix", owned.path)  # for `aioipc ls`, should a crash leave it
        try:
            if stat.S_IMODE(os.stat(path).st_mode) != mode:
                os.chmod(path, mode)  # the umask made it stricter than asked
            if backlog is not None:
                sock.listen(backlog)
        except BaseException:
            owned.remove()
            raise
    return owned
