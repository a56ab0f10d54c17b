"""Typed ``extra()`` attributes that aioipc streams provide."""

from __future__ import annotations

import struct
from typing import NamedTuple

from anyio import TypedAttributeSet, typed_attribute

__all__ = ["UCRED", "IPCAttribute", "PeerCredentials"]

UCRED = struct.Struct("3i")
"""The kernel's ``struct ucred`` (pid, uid, gid): ``SO_PEERCRED`` and ``SCM_CREDENTIALS`` payloads."""


class PeerCredentials(NamedTuple):
    """The process at the other end of a Unix socket, as the kernel saw it at connect time."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def from_ucred(cls, raw: bytes) -> PeerCredentials:
        """Parse a ``struct ucred`` (``SO_PEERCRED``, or an ``SCM_CREDENTIALS`` payload)."""
        return cls(*UCRED.unpack_from(raw))


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
