"""Open-file-description record locks (``fcntl(F_OFD_*)``), the primitives of file locks and rings.

OFD locks belong to the open file, not the process: two handles in one
process exclude each other, closing another fd of the file keeps them, and
they conflict with classic ``fcntl(F_SETLK)`` locks of C programs. The
kernel drops them when the last fd of the open file closes, also when its
process is killed.

A blocking :func:`ofd_lock` is made through ctypes, because Python's
``fcntl.fcntl`` retries after ``EINTR`` (PEP 475): here ``EINTR`` is an
``InterruptedError``, so a bridge thread waiting for the lock can be
interrupted (:mod:`aioipc._core.bridge`) and leaves no kernel wait behind.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from types import TracebackType
from typing import Self

__all__ = ["AcquireRelease", "ofd_lock", "ofd_locked", "ofd_unlock"]


class AcquireRelease:
    """``async with x:`` for anything with ``await acquire()`` and ``release()`` (locks, semaphores)."""

    async def acquire(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class _Flock(ctypes.Structure):
    _fields_ = (
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_fcntl = _libc.fcntl  # variadic: its third argument is passed as a pointer
_fcntl.restype = ctypes.c_int


def _request(kind: int, start: int, length: int) -> _Flock:
    return _Flock(kind, os.SEEK_SET, start, length, 0)


def ofd_lock(fd: int, start: int, length: int, *, exclusive: bool, wait: bool) -> bool:
    """Lock ``length`` bytes from ``start`` (0: to the end) for this open file.

    Returns ``False`` if another open file holds a conflicting lock and not ``wait``.

    Raises:
        InterruptedError: a signal interrupted the wait (``wait=True``); nothing was locked.
        OSError: ``EDEADLK``, ``EBADF`` ...
    """
    request = _request(fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, start, length)
    if wait:
        if _fcntl(fd, fcntl.F_OFD_SETLKW, ctypes.byref(request)) == 0:
            return True
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))  # EINTR comes out as InterruptedError
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, bytes(request))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def ofd_unlock(fd: int, start: int, length: int) -> None:
    """Remove this open file's record lock on the range."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, bytes(_request(fcntl.F_UNLCK, start, length)))


def ofd_locked(fd: int, start: int, length: int) -> bool:
    """Whether some other open file (any process) holds a lock on the range."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, bytes(_request(fcntl.F_WRLCK, start, length)))
    return bool(_Flock.from_buffer_copy(answer).l_type != fcntl.F_UNLCK)
