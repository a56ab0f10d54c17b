"""systemd: serve the sockets it opened for us (socket activation), and tell it how we are.

Socket activation: systemd binds the socket of a ``.socket`` unit, starts the
service on the first client, and hands the listening socket over as fd 3
(and on) with ``LISTEN_FDS``, ``LISTEN_PID`` and ``LISTEN_FDNAMES``::

    server = await aioipc.serve("sd-listen:", handler)      # the one inherited socket
    server = await aioipc.serve("sd-listen:admin", handler) # by FileDescriptorName=

The socket's type decides what the handler gets, as for the matching
address: a listening stream socket one (framed, unless ``framing=None``)
stream per connection, seqpacket a message stream per connection, a
datagram socket one message stream. The socket file is never removed:
systemd owns it. :func:`listen_fds` gives the inherited fds raw.

Readiness: :func:`notify` speaks the ``sd_notify`` protocol on
``$NOTIFY_SOCKET`` (``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``WATCHDOG=1``);
without that variable it does nothing. ``aioipc.graceful_shutdown(notify=True)``
sends ``STOPPING=1`` and the watchdog pings for you, and ``sd.ready()``
sends ``READY=1``.

Caveats:
    Linux only. The inherited fds stay open and ours: serving one works on
    a duplicate, so the same socket can be served again after a close. The
    variables are left in the environment unless ``listen_fds(unset_environment=True)``
    is called; a child process that inherits them sees a ``LISTEN_PID``
    that is not its own and ignores them.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any, NamedTuple

from ._core.framing import DEFAULT_MAX_SIZE
from ._core.schemes import Address, Framing, Handler
from ._core.server import Server
from .sockets import serve_socket

__all__ = ["LISTEN_FDS_START", "ListenFd", "listen_fds", "notify"]

#: the first inherited fd (``SD_LISTEN_FDS_START``)
LISTEN_FDS_START = 3

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ListenFd(NamedTuple):
    """One fd systemd passed: its number, its ``FileDescriptorName=``, and what it is.

    ``family`` and ``type`` are ``None`` for an fd that is not a socket
    (a ``ListenFIFO=``, say).
    """

    fd: int
    name: str
    family: socket.AddressFamily | None
    type: socket.SocketKind | None


def _environment() -> str:
    return ", ".join(
        f"{name}={os.environ[name]!r}" if name in os.environ else f"{name} unset" for name in _VARIABLES
    )


def _describe(fd: int, name: str) -> ListenFd:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ValueError(f"LISTEN_FDS promises fd {fd}, which is not open ({_environment()})") from exc
    os.set_inheritable(fd, False)  # as sd_listen_fds() does: our children do not get it
    if not stat.S_ISSOCK(mode):
        return ListenFd(fd, name, None, None)
    sock = socket.socket(fileno=fd)
    try:
        return ListenFd(fd, name, sock.family, sock.type)
    finally:
        sock.detach()


def listen_fds(unset_environment: bool = False) -> list[ListenFd]:
    """The fds systemd (or ``systemd-socket-activate``) passed to this process, as ``sd_listen_fds()``.

    None when ``LISTEN_PID`` is unset or names another process (the
    variables were inherited from a parent, and the fds are not ours).
    Names come from ``LISTEN_FDNAMES`` (``"unknown"`` without it). Each fd
    is marked close-on-exec; it stays open, and the caller may use it or
    wrap it (``socket.socket(fileno=os.dup(fd))``).

    Args:
        unset_environment: remove the three variables afterwards, so that
            nothing later (a second call, a child) sees them.

    Raises:
        ValueError: malformed variables, a count that does not match the
            names, or a promised fd that is not open.

    Example::

        for inherited in aioipc.systemd.listen_fds():
            print(inherited.fd, inherited.name, inherited.type)
    """
    try:
        pid_text = os.environ.get("LISTEN_PID")
        count_text = os.environ.get("LISTEN_FDS")
        if pid_text is None or count_text is None:
            return []
        if not pid_text.isdigit() or not count_text.isdigit():
            raise ValueError(f"malformed socket activation variables: {_environment()}")
        if int(pid_text) != os.getpid():
            return []
        count = int(count_text)
        if count == 0:
            return []
        names_text = os.environ.get("LISTEN_FDNAMES")
        names = names_text.split(":") if names_text is not None else ["unknown"] * count
        if len(names) != count:
            raise ValueError(f"LISTEN_FDNAMES does not name each of the LISTEN_FDS fds: {_environment()}")
        return [_describe(LISTEN_FDS_START + i, name) for i, name in enumerate(names)]
    finally:
        if unset_environment:
            for name in _VARIABLES:
                os.environ.pop(name, None)


def _pick(name: str) -> ListenFd:
    """The inherited socket ``sd-listen:NAME`` means (the only one when ``name`` is empty)."""
    fds = listen_fds()
    if not fds:
        raise ValueError(
            f"sd-listen: needs a socket inherited from systemd and found none ({_environment()}, "
            f"this process is {os.getpid()}); start it from a .socket unit or systemd-socket-activate"
        )
    found = ", ".join(f"fd {inherited.fd} {inherited.name!r}" for inherited in fds)
    matches = [inherited for inherited in fds if not name or inherited.name == name]
    if len(matches) != 1:
        wanted = f"a socket named {name!r}" if name else "exactly one socket"
        raise ValueError(f"sd-listen:{name} wants {wanted}; inherited: {found}; pick one with sd-listen:NAME")
    if matches[0].type is None:
        raise ValueError(f"sd-listen:{name}: fd {matches[0].fd} {matches[0].name!r} is not a socket")
    return matches[0]


def notify(*states: str) -> bool:
    """Send ``sd_notify`` state lines (``"READY=1"``, ``"STATUS=..."``) to ``$NOTIFY_SOCKET`` in one datagram.

    A plain call, not awaited. Each argument is one ``KEY=VALUE`` line (or
    several, joined by newlines). ``$NOTIFY_SOCKET`` is a path or an
    abstract ``@name``.

    Returns:
        ``True`` when sent; ``False`` when ``$NOTIFY_SOCKET`` is unset
        (not run by systemd, or readiness not asked for): then it does nothing.

    Raises:
        ValueError: no state given, or a ``$NOTIFY_SOCKET`` that is neither a path nor an ``@name``.
        TimeoutError: the receiver's queue stayed full for a second.
        OSError: nobody receives there (``ConnectionRefusedError``, ``FileNotFoundError``).

    Example::

        aioipc.systemd.notify("READY=1", "STATUS=serving 3 queues")
    """
    if not states:
        raise ValueError("notify() needs at least one state line, such as 'READY=1'")
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target[0] not in "/@":
        raise ValueError(f"NOTIFY_SOCKET={target!r} is neither a path nor an abstract @name")
    address = "\0" + target[1:] if target[0] == "@" else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(1)  # a full queue at systemd blocks briefly, never the loop for long
        sock.sendto("\n".join(states).encode(), address)
    return True


async def serve_address(
    address: Address,
    handler: Handler,
    *,
    framing: Framing = "length",
    max_size: int = DEFAULT_MAX_SIZE,
    **options: Any,
) -> Server:
    """``serve("sd-listen:NAME", handler)``: serve the inherited socket (a duplicate of its fd)."""
    inherited = _pick(address.path)
    sock = socket.socket(fileno=os.dup(inherited.fd))  # the inherited fd stays ours, open
    try:
        return await serve_socket(sock, handler, framing=framing, max_size=max_size, **options)
    except BaseException:
        sock.close()
        raise
