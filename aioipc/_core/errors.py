"""aioipc's errors, and the one place that turns the errors of the OS and of
the libraries aioipc stands on into them.

The tree::

    Exception
    ├── aioipc.IPCError                  root of aioipc's own errors
    │   ├── FrameTooLarge (ValueError)   a frame over ``max_size``, refused before allocation
    │   ├── ProtocolError                malformed input from the peer (bad header, bad codec data)
    │   │   ├── TruncatedMessage (anyio.BrokenResourceError)
    │   │   │                            the peer closed or died in the middle of a message
    │   │   └── FdsTruncated             more file descriptors than ``max_fds`` (all closed)
    │   ├── PeerDied (anyio.BrokenResourceError)
    │   │                                the peer process died; the channel is unusable
    │   ├── AddressInUse (OSError)       a live server already owns the address
    │   ├── RingInUse                    a shared-memory ring already has its one peer
    │   └── DBusError                    a D-Bus error reply (also a ``dbus_fast.DBusError``)
    └── anyio's stream exceptions, used where their meaning applies:
        ├── anyio.EndOfStream            the peer closed its sending side (cleanly)
        ├── anyio.BrokenResourceError    the OS or the peer broke the channel (errno kept in __cause__)
        ├── anyio.ClosedResourceError    you closed this stream yourself
        └── anyio.BusyResourceError      two tasks used one direction at once

OS errors that mean neither (``ENOENT``, ``EACCES``, ``ENXIO`` ...) keep their
errno and their ``OSError`` subclass.

The map: :func:`map_exceptions` turns what a source raises into an errno
(one table per source: ``OSError`` carries it; :data:`POSIX_IPC`,
:data:`SYSV_IPC` and :data:`DBUS_FAST` give it for those libraries, looked
up by class name so that none of them is imported here), then the errno
into the exception a caller reads, by what the call was doing (``op``):
creating, opening, removing a named object, or using a stream. Messages
name the object, and say how to remove one that was left behind.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import anyio

__all__ = [
    "DBUS_FAST",
    "POSIX_IPC",
    "SYSV_IPC",
    "AddressInUse",
    "DBusError",
    "FdsTruncated",
    "FrameTooLarge",
    "IPCError",
    "PeerDied",
    "ProtocolError",
    "RingInUse",
    "TruncatedMessage",
    "broken",
    "map_exceptions",
]


class IPCError(Exception):
    """Root of the errors aioipc raises itself."""


class FrameTooLarge(IPCError, ValueError):
    """A message is larger than the stream's ``max_size``.

    Raised by ``send()`` before anything is written, and by ``receive()`` as
    soon as a frame header announces more than ``max_size`` bytes, before
    any buffer for it is allocated. A receiving stream that raised it is
    broken afterwards: the rest of the byte stream cannot be trusted.
    """

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"message of {size} bytes exceeds max_size={max_size}")
        self.size = size
        self.max_size = max_size


class ProtocolError(IPCError):
    """The peer sent something that does not follow the protocol."""


class TruncatedMessage(ProtocolError, anyio.BrokenResourceError):
    """The peer closed, or died, in the middle of a message; the part received is dropped."""


class FdsTruncated(ProtocolError):
    """The peer sent more file descriptors than ``max_fds``.

    The ones that arrived were closed and the kernel dropped the rest, so
    none leaked; the bytes that came with them are in :attr:`data`.
    """

    def __init__(self, max_fds: int, data: bytes) -> None:
        super().__init__(f"the peer sent more than max_fds={max_fds} file descriptors; all were closed")
        self.data = data


class PeerDied(IPCError, anyio.BrokenResourceError):
    """The process at the other end died; nothing more will come from it."""


class AddressInUse(IPCError, OSError):
    """A live server already listens on this address; it was left alone."""

    def __init__(self, address: str) -> None:
        super().__init__(errno.EADDRINUSE, f"address already in use by a live server: {address}")
        self.address = address


class RingInUse(IPCError):
    """The ring already has (or had) its one attached peer; a ring links exactly two processes."""


class DBusError(IPCError):
    """A D-Bus error reply, e.g. ``org.freedesktop.DBus.Error.ServiceUnknown``.

    Raise it from a method of an exported object to answer the caller with
    that error name and text. Every instance is also a ``dbus_fast.DBusError``
    (the class dbus-fast answers callers with), made on first use so that
    importing aioipc does not import dbus-fast.

    Attributes:
        name: the D-Bus error name.
        text: the human-readable message the error carried (may be empty).
        reply: the error message received, if any.
    """

    def __new__(cls, name: str, text: str = "", reply: Any = None) -> DBusError:
        if cls is DBusError:
            cls = _dbus_error_class()
        return super().__new__(cls, name, text, reply)

    def __init__(self, name: str, text: str = "", reply: Any = None) -> None:
        super().__init__(name, text, reply)  # dbus-fast's: checks the name, sets .type/.text/.reply
        self.name = name
        self.text = text
        self.reply = reply

    def __str__(self) -> str:
        return f"{self.name}: {self.text}" if self.text else self.name

    @classmethod
    def from_reply(cls, reply: Any) -> DBusError:
        """The error carried by an ``ERROR`` reply message (a ``dbus_fast.Message``)."""
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        return cls(reply.error_name or "org.freedesktop.DBus.Error.Failed", text, reply)


@functools.cache
def _dbus_error_class() -> type[DBusError]:
    """``DBusError`` that is also dbus-fast's, so exported methods answer with it (plain without it)."""
    try:
        import dbus_fast
    except ModuleNotFoundError:
        return DBusError
    wire = type("DBusError", (DBusError, dbus_fast.DBusError), {"__module__": DBusError.__module__})
    wire.__doc__ = DBusError.__doc__
    return wire


# -- the tables: what each source raises, as an errno ------------------------------------------

_EXISTENTIAL = -1  # EEXIST when creating, ENOENT when opening or removing, EIDRM in use

#: posix_ipc's exceptions, by class name
POSIX_IPC: dict[str, int] = {
    "ExistentialError": _EXISTENTIAL,
    "PermissionsError": errno.EACCES,
    "BusyError": errno.EAGAIN,
    "SignalError": errno.EINTR,
}

#: sysv_ipc's exceptions, by class name
SYSV_IPC: dict[str, int] = {
    "ExistentialError": _EXISTENTIAL,
    "PermissionsError": errno.EACCES,
    "BusyError": errno.EAGAIN,
    "NotAttachedError": errno.EINVAL,
}

#: dbus-fast hands ``EOFError`` (or an ``OSError``) to pending calls when its connection ends
DBUS_FAST: dict[str, int] = {"EOFError": errno.ECONNRESET}

_TABLES = {"posix_ipc": POSIX_IPC, "sysv_ipc": SYSV_IPC, "builtins": DBUS_FAST}

#: in use, these mean the channel is gone
_BROKEN = frozenset(
    {
        errno.EPIPE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
        errno.ETIMEDOUT,
        errno.EBADF,
    }
)
#: in use of a named object, these mean it was removed (EINVAL: its System V id is stale)
_REMOVED = frozenset({errno.ENOENT, errno.EIDRM, errno.EINVAL})

Op = Literal["create", "open", "remove", "use"]


def _errno(exc: BaseException, op: Op) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    table = _TABLES.get(type(exc).__module__)
    code = None if table is None else table.get(type(exc).__name__)
    if code == _EXISTENTIAL:
        return {"create": errno.EEXIST, "use": errno.EIDRM}.get(op, errno.ENOENT)
    return code


def broken(error: BaseException) -> anyio.BrokenResourceError:
    """The ``BrokenResourceError`` for an error that broke a channel; raise it ``from error``."""
    code = getattr(error, "errno", None)
    detail = f"{error.strerror} (errno {code})" if isinstance(error, OSError) and code else repr(error)
    return anyio.BrokenResourceError(detail)


def _translate(
    exc: BaseException, what: str | None, op: Op, closed: bool, hint: str | None
) -> BaseException | None:
    code = _errno(exc, op)
    if code is None:
        return None
    if op == "use":
        if code in _BROKEN:
            if closed:
                return anyio.ClosedResourceError()
            return (
                broken(exc) if what is None else anyio.BrokenResourceError(f"{what} was lost: {broken(exc)}")
            )
        if what is not None and code in _REMOVED:
            return anyio.BrokenResourceError(f"{what} was removed")
        if what is not None and code in (errno.EACCES, errno.EPERM):
            return PermissionError(code, f"no permission for {what}")
        return None
    if what is None:
        return None
    if code == errno.EEXIST and op == "create":
        return FileExistsError(code, f"{what} exists ({hint})" if hint else f"{what} exists")
    if code == errno.ENOENT and op != "create":
        return FileNotFoundError(code, f"no {what}")
    if code in (errno.EACCES, errno.EPERM):
        return PermissionError(code, f"no permission for {what}")
    return None


@contextmanager
def map_exceptions(
    what: str | None = None, *, op: Op = "use", closed: bool = False, hint: str | None = None
) -> Iterator[None]:
    """Translate what the block raises (``OSError``, posix_ipc, sysv_ipc, dbus-fast) for a caller.

    Args:
        what: the named object the block works on, as errors name it
            ("POSIX queue /jobs"); ``None`` for an anonymous stream.
        op: ``"create"`` (an existing object is ``FileExistsError``),
            ``"open"`` / ``"remove"`` (a missing one is ``FileNotFoundError``),
            or ``"use"``: errors that mean the channel is gone (``EPIPE``,
            ``ECONNRESET`` ..., or the named object was removed) become
            ``BrokenResourceError`` with the original as ``__cause__``, so
            that the errno survives.
        closed: this side closed its handle: in use, a broken channel or
            ``EBADF`` is ``ClosedResourceError`` (``from None``).
        hint: how to get past an existing object, for ``FileExistsError``
            ("remove it with `aioipc rm mq:/jobs`").

    Anything the tables do not cover propagates unchanged; an ``OSError``
    made here carries the errno of what it replaces.

    Example::

        with map_exceptions("POSIX queue /jobs", op="open"):
            queue = posix_ipc.MessageQueue("/jobs")
    """
    try:
        yield
    except Exception as exc:
        mapped = _translate(exc, what, op, closed, hint)
        if mapped is None:
            raise
        if isinstance(mapped, anyio.BrokenResourceError):
            raise mapped from exc
        raise mapped from None
