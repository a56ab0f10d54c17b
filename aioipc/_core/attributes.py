"""Typed ``extra()`` attributes that aioipc streams provide."""

from __future__ import annotations

from typing import NamedTuple

from anyio import TypedAttributeSet, typed_attribute

__all__ = ["IPCAttribute", "PeerCredentials"]


class PeerCredentials(NamedTuple):
    """The process at the other end of a Unix socket, as the kernel saw it at connect time."""

    pid: int
    uid: int
    gid: int


class IPCAttribute(TypedAttributeSet):
    """Attributes for ``stream.extra(...)``; a missing one raises ``anyio.TypedAttributeLookupError``.

    Example::

        fd = stream.extra(aioipc.IPCAttribute.fd)
        path = stream.extra(aioipc.IPCAttribute.path, None)
    """

    #: the file descriptor the stream reads or writes (still owned by the stream)
    fd: int = typed_attribute()
    #: the filesystem path or name of the kernel object (FIFO path, socket path, queue name)
    path: str = typed_attribute()
    #: the peer's pid, uid and gid where the kernel tells them (Unix sockets)
    peer_credentials: PeerCredentials = typed_attribute()
