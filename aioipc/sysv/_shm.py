"""System V shared memory and semaphores by key, shared with C programs
(``shmget``/``shmat``, ``semget``/``semop``) that use the same key.

Re-exported by :mod:`aioipc.sysv`. A System V semaphore has no file
descriptor, so a contended ``acquire()`` blocks in ``semop`` in a bridge
thread (no polling); cancelling it ends that wait at once and never leaks a unit.

Example::

    key = aioipc.sysv.ftok(".", 1)         # any path that exists, as C computes it
    async with await aioipc.sysv.SharedMemory.create(key, 4096) as shm:
        # a signal from one process to another: no undo, or our exit would take it back
        sem = await aioipc.sysv.Semaphore.open(key, create=True, initial=0, undo=False)
        shm.buf[:5] = b"hello"
        sem.release()                       # a C program waiting in semop() wakes up
        await sem.aclose()
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from typing import Self, Unpack

import sysv_ipc

from .._core.memory import MemoryHandle
from .._core.naming import Kind, create_or_open, open_existing
from .._core.semaphores import BridgedSemaphore, SemaphoreOptions
from .._core.sysvipc import check_key

__all__ = ["SharedMemory", "Semaphore"]


class _SemBuf(ctypes.Structure):
    _fields_ = (("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short))


_IPC_NOWAIT, _SEM_UNDO = 0o4000, 0x1000
_libc = ctypes.CDLL(None, use_errno=True)
_semop_call = _libc.semop  # through ctypes: it fails with EINTR instead of retrying
_semop_call.argtypes = (ctypes.c_int, ctypes.POINTER(_SemBuf), ctypes.c_size_t)
_semop_call.restype = ctypes.c_int


def _semop(semid: int, delta: int, *, undo: bool, wait: bool) -> bool:
    """One ``semop`` on semaphore 0 of the set (the GIL is released while it blocks).

    Returns ``False`` when it would block and not ``wait``.

    Raises:
        InterruptedError: a signal interrupted the wait; nothing was done.
        FileNotFoundError: the set was removed.
    """
    flags = (_SEM_UNDO if undo else 0) | (0 if wait else _IPC_NOWAIT)
    operation = _SemBuf(0, delta, flags)
    if _semop_call(semid, ctypes.byref(operation), 1) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EAGAIN:
        return False
    if code in (errno.EIDRM, errno.EINVAL):
        raise FileNotFoundError(code, "the System V semaphore was removed")
    raise OSError(code, os.strerror(code))  # EINTR comes out as InterruptedError


def _interrupted(exc: BaseException) -> bool:
    return isinstance(exc, InterruptedError)


_SEGMENT = Kind("System V segment", "sysvshm", check_key)
_SEMAPHORE = Kind("System V semaphore", "sysvsem", check_key)


class SharedMemory(MemoryHandle):
    """A System V shared-memory segment, attached; ``.buf`` is a ``memoryview`` of it.

    Get one with :meth:`create` or :meth:`attach`; ``aclose()`` detaches,
    and removes the segment if this handle created it (unless ``persist=True``).

    Caveats:
        Release every ``memoryview`` made from ``.buf`` before ``aclose()``:
        it raises ``BufferError`` otherwise (detaching under a live view
        would crash the process). A removed segment lives on until the last
        process detaches.
    """

    def __init__(self, segment: sysv_ipc.SharedMemory, *, owned: bool) -> None:
        self._segment = segment
        self.key: int = segment.key
        self.id: int = segment.id
        self.size: int = segment.size
        self.owned = owned
        self.buf = self._view()
        self._closed = False

    def __repr__(self) -> str:
        return f"<sysv.SharedMemory key={self.key & 0xFFFFFFFF:#010x} size={self.size} owned={self.owned}>"

    @classmethod
    async def create(
        cls, key: int, size: int, *, exist_ok: bool = False, mode: int = 0o600, persist: bool = False
    ) -> SharedMemory:
        """Create the segment ``key`` of ``size`` bytes (zeroed) with permission bits ``mode``.

        Args:
            exist_ok: attach an existing segment instead of failing (it is then not removed on close).
            persist: leave the segment after ``aclose()``.

        Raises:
            FileExistsError: a segment with that key exists (and not ``exist_ok``).
            ValueError: bad key or size (``size`` over the system's ``shmmax``).
        """
        if size <= 0:
            raise ValueError("size must be > 0")

        def make(key: int) -> sysv_ipc.SharedMemory:  # System V ignores the umask: exactly ``mode``
            return sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode, size, init_character=b"\0")

        segment, owned = await create_or_open(
            _SEGMENT, key, make, sysv_ipc.SharedMemory, create=True, exist_ok=exist_ok, persist=persist
        )
        return cls(segment, owned=owned)

    @classmethod
    async def attach(cls, key: int) -> SharedMemory:
        """Attach the existing segment ``key``; closing only detaches.

        Raises:
            FileNotFoundError: no segment with that key.
            PermissionError: its mode forbids it.
        """
        return cls(await open_existing(_SEGMENT, key, sysv_ipc.SharedMemory), owned=False)

    @property
    def attached(self) -> int:
        """How many attachments the segment has now (all processes)."""
        return int(self._segment.number_attached) if not self._closed else 0

    def _view(self) -> memoryview:
        return memoryview(self._segment)

    def _unmap(self) -> None:
        # Views made from .buf keep the segment object referenced; detaching
        # under them would leave them pointing at unmapped memory.
        if sys.getrefcount(self._segment) > 2:
            raise BufferError
        self._segment.detach()

    def _remove(self) -> None:
        try:
            self._segment.remove()
        except sysv_ipc.ExistentialError:
            pass


class Semaphore(BridgedSemaphore[int]):
    """A System V semaphore (a set of one) by key. Get one with :meth:`open`.

    ``async with sem:`` acquires and releases; ``await sem.aclose()`` closes
    the handle and removes the set if this handle created it (removing the
    set wakes every process waiting on it with an error).

    With ``undo=True`` (the default) every operation is ``SEM_UNDO``: when a
    process dies, the kernel reverts what it did, so a holder killed by
    SIGKILL gives its units back. Use ``undo=False`` for a semaphore that
    signals between processes (one releases, another acquires).

    Raises:
        FileNotFoundError: (from ``acquire()``/``release()``) the set was removed.
    """

    _KIND = _SEMAPHORE

    def __init__(self, semaphore: sysv_ipc.Semaphore, *, owned: bool, undo: bool = True) -> None:
        super().__init__(
            semaphore, semaphore.key, owned=owned, wait_call="semop", is_interrupted=_interrupted
        )
        self.undo = undo
        self.key: int = semaphore.key
        self.id: int = semaphore.id

    @classmethod
    async def open(cls, key: int, *, undo: bool = True, **options: Unpack[SemaphoreOptions]) -> Self:
        """Open the semaphore set ``key``, or create it holding ``initial`` units.

        The options are :meth:`aioipc.sync.Semaphore.open`'s; ``undo`` makes
        every operation of this handle ``SEM_UNDO`` (see the class).

        Raises:
            FileNotFoundError: no set with that key (``create=False``).
            FileExistsError: it exists (``create=True`` and not ``exist_ok``).
            PermissionError: its mode forbids it.
            ValueError: bad key or negative ``initial``.
        """
        semaphore = await super().open(key, **options)
        semaphore.undo = undo
        return semaphore

    @staticmethod
    def _make(key: int, mode: int, initial: int) -> sysv_ipc.Semaphore:
        return sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode, initial)  # System V ignores the umask

    _open_existing = staticmethod(sysv_ipc.Semaphore)

    def _try_acquire(self) -> bool:
        return _semop(self.id, -1, undo=self.undo, wait=False)

    def _wait(self) -> None:
        _semop(self.id, -1, undo=self.undo, wait=True)

    def _release(self) -> None:
        _semop(self.id, 1, undo=self.undo, wait=True)

    def _remove(self) -> None:
        try:
            self._sem.remove()
        except sysv_ipc.ExistentialError:
            pass
