"""aioipc's errors, and the one place that turns ``OSError`` into stream errors.

The tree::

    Exception
    ├── aioipc.IPCError                  root of aioipc's own errors
    │   ├── FrameTooLarge (ValueError)   a frame over ``max_size``, refused before allocation
    │   ├── ProtocolError                malformed input from the peer (bad header, bad codec data)
    │   │   └── TruncatedMessage (anyio.BrokenResourceError)
    │   │                                the peer closed or died in the middle of a message
    │   ├── PeerDied (anyio.BrokenResourceError)
    │   │                                the peer process died; the channel is unusable
    │   └── AddressInUse (OSError)       a live server already owns the address
    └── anyio's stream exceptions, used where their meaning applies:
        ├── anyio.EndOfStream            the peer closed its sending side (cleanly)
        ├── anyio.BrokenResourceError    the OS or the peer broke the channel (errno kept in __cause__)
        ├── anyio.ClosedResourceError    you closed this stream yourself
        └── anyio.BusyResourceError      two tasks used one direction at once

OS errors that mean neither (``ENOENT``, ``EACCES``, ``ENXIO`` ...) keep their
errno and their ``OSError`` subclass.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

__all__ = [
    "AddressInUse",
    "FrameTooLarge",
    "IPCError",
    "PeerDied",
    "ProtocolError",
    "TruncatedMessage",
    "map_os_errors",
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


class PeerDied(IPCError, anyio.BrokenResourceError):
    """The process at the other end died; nothing more will come from it."""


class AddressInUse(IPCError, OSError):
    """A live server already listens on this address; it was left alone."""

    def __init__(self, address: str) -> None:
        super().__init__(errno.EADDRINUSE, f"address already in use by a live server: {address}")
        self.address = address


_BROKEN_ERRNOS = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ESHUTDOWN, errno.ETIMEDOUT}
)


@contextmanager
def map_os_errors(closed: bool = False) -> Iterator[None]:
    """Translate ``OSError`` raised inside the block into anyio stream errors.

    ``EBADF`` after our own close becomes ``ClosedResourceError`` (pass
    ``closed=True`` when the caller knows its handle is closed); errors that
    mean the channel is gone (``EPIPE``, ``ECONNRESET`` ...) become
    ``BrokenResourceError`` with the ``OSError`` as ``__cause__`` so that the
    errno survives. Anything else propagates unchanged.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EBADF and closed:
            raise anyio.ClosedResourceError from None
        if exc.errno in _BROKEN_ERRNOS or exc.errno == errno.EBADF:
            raise anyio.BrokenResourceError(f"{exc.strerror} (errno {exc.errno})") from exc
        raise
