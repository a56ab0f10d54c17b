"""Semaphores and file locks between processes, awaited without blocking the loop.

- :class:`Semaphore`: a POSIX named semaphore (``sem_open``), shared by name
  with any process, C programs included.
- :class:`FileLock`: an fcntl record lock on a file, exclusive or shared,
  that the kernel releases when its holder dies.

Neither has a file descriptor an event loop can poll, so a contended
``acquire()`` waits in a bridge thread (:mod:`aioipc._core.bridge`) that
blocks in the kernel (``sem_wait``, ``F_OFD_SETLKW``) and wakes the loop
with ``call_soon_threadsafe``: no sleep-polling, an idle waiter costs no
CPU. Uncontended acquires never start a thread.

Rule 1: a cancelled (or timed-out) ``acquire()`` ends its kernel wait at
once (the bridge interrupts it with a signal) and leaves no thread, fd or
kernel wait behind; a unit or lock got at that very moment is given back.
Rule 2: the kernel object (semaphore handle, lock fd) is closed only after
its waiting thread has returned, so a close never pulls it from under a waiter.

On a semaphore ``async with sem:`` holds a unit (acquire ... release), as
on an ``asyncio.Semaphore``; it does not close the handle. Say which you
mean: ``async with sem.hold():`` for a unit, ``async with sem.closing():``
(or ``await sem.aclose()``) for the handle.

Example::

    sem = await aioipc.sync.Semaphore.open("/jobs", create=True, initial=4)
    async with sem.closing():                # the handle: closed, and "/jobs" removed (we created it)
        async with sem.hold():               # one unit: acquire ... release
            await do_the_work()

    async with aioipc.sync.FileLock("state.lock"):   # created if missing; released if we die
        update_the_state_file()
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import posix_ipc

from ._core.bridge import Bridge
from ._core.locks import AcquireRelease, ofd_lock
from ._core.naming import Kind, open_file
from ._core.semaphores import BridgedSemaphore
from ._core.sysvipc import ObjectInfo, list_sysv

__all__ = ["FileLock", "Semaphore", "SemaphoreInfo", "list_semaphores", "unlink"]

_SHM_DIR = "/dev/shm"


# -- POSIX named semaphores ------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not name.startswith("/") or "/" in name[1:] or len(name) < 2 or len(name) > 251 or "\0" in name:
        raise ValueError(f"bad semaphore name {name!r}: one '/' followed by up to 250 other characters")
    return name


class Semaphore(BridgedSemaphore[str]):
    """A POSIX named semaphore. Get one with :meth:`open`.

    ``async with sem:`` acquires a unit and releases it at the end of the
    block; ``await sem.aclose()`` closes the handle (and removes the
    semaphore if this handle created it, unless ``persist=True``). Waiting
    tasks in other processes keep their handles; a removed name can be
    created anew while they still use the old semaphore.

    Caveats:
        POSIX semaphores have no undo: a process that dies holding a unit
        keeps it for ever. For a lock that survives crashes, use
        :class:`FileLock` or a System V semaphore (``aioipc.sysv``, SEM_UNDO).
    """

    _KIND = Kind("POSIX semaphore", "sem", _check_name)

    def __init__(self, sem: posix_ipc.Semaphore, *, owned: bool) -> None:
        super().__init__(sem, sem.name, owned=owned, wait_call="sem_wait", is_interrupted=_interrupted)
        self.name: str = sem.name

    @staticmethod
    def _make(name: str, mode: int, initial: int) -> posix_ipc.Semaphore:
        return posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode & 0o777, initial)

    _open_existing = staticmethod(posix_ipc.Semaphore)

    @staticmethod
    def _set_mode(sem: posix_ipc.Semaphore, mode: int) -> None:
        # sem_open applied the umask to what we asked, never loosening it; now exactly.
        os.chmod(os.path.join(_SHM_DIR, "sem." + sem.name[1:]), mode)

    @staticmethod
    def _discard(sem: posix_ipc.Semaphore) -> None:
        sem.unlink()
        sem.close()

    def _try_acquire(self) -> bool:
        try:
            self._sem.acquire(0)
        except posix_ipc.BusyError:
            return False
        return True

    def _wait(self) -> None:
        self._sem.acquire()  # sem_wait; SignalError when interrupted

    def _release(self) -> None:
        self._sem.release()

    def _remove(self) -> None:
        try:
            self._sem.unlink()
        except posix_ipc.ExistentialError:
            pass

    def _close_handle(self) -> None:
        self._sem.close()


def _interrupted(exc: BaseException) -> bool:
    return isinstance(exc, posix_ipc.SignalError)


def unlink(name: str) -> None:
    """Remove the POSIX semaphore ``name``; processes that have it open keep using it.

    Raises:
        FileNotFoundError: no such semaphore.
        PermissionError: it belongs to another user.
    """
    with Semaphore._KIND.map_errors(_check_name(name), "remove"):
        posix_ipc.unlink_semaphore(name)


# -- fcntl record locks ----------------------------------------------------------------------


class FileLock(AcquireRelease):
    """An fcntl record lock on the whole of ``path``, exclusive or shared.

    ``async with FileLock(path):`` acquires and releases. The file is
    opened on the first :meth:`acquire` (created with mode 0600 if missing,
    never truncated, never through a symbolic link) and closed on :meth:`release`.

    Args:
        shared: a read lock, which any number of holders share; an exclusive
            lock (the default) excludes every other holder.

    Caveats:
        The kernel releases the lock when the holder dies, even by SIGKILL.
        These are open-file-description locks (Linux 3.15+): each
        ``FileLock`` excludes every other one, also in the same process, and
        they conflict with ``fcntl(F_SETLK)``/``lockf`` locks of other
        programs. ``flock(2)`` locks are a separate kind and do not conflict.
        Not reentrant: a second ``acquire()`` on a held lock raises.

    Example::

        async with aioipc.sync.FileLock("/tmp/app.lock", shared=True):
            data = read_state()
    """

    def __init__(self, path: str | os.PathLike[str], shared: bool = False) -> None:
        self.path = os.fspath(path)
        self.shared = shared
        self._fd = -1
        self._bridge = Bridge("lock", is_interrupted=_lock_interrupted, linger=False)

    def __repr__(self) -> str:
        kind = "shared" if self.shared else "exclusive"
        return f"<FileLock {self.path!r} {kind} {'held' if self.locked else 'free'}>"

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd >= 0

    def _open(self) -> int:
        return open_file(self.path)[0]

    async def acquire(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout`` seconds, ``None``: for ever) until this process holds the lock.

        Raises:
            TimeoutError: another holder kept it for ``timeout`` seconds.
            RuntimeError: this object already holds it.
            OSError: the file cannot be opened (``PermissionError``; ``ELOOP``:
                ``path`` is a symbolic link, which is never followed).
            ValueError: ``path`` is not a regular file.

        Cancelling it (or its timeout) ends the kernel wait at once and
        closes the file: no thread, fd or lock is left behind.
        """
        if self._fd >= 0:
            raise RuntimeError(f"{self!r} is already held (FileLock is not reentrant)")
        fd = self._open()
        exclusive = not self.shared
        try:
            if ofd_lock(fd, 0, 0, exclusive=exclusive, wait=False):
                await anyio.lowlevel.checkpoint()
            elif timeout is not None and timeout <= 0:
                raise TimeoutError(f"lock on {self.path!r} not acquired")
            else:
                await self._wait(fd, timeout)
        except BaseException:
            os.close(fd)  # a lock got at the moment of a cancel goes with it
            raise
        self._fd = fd

    async def _wait(self, fd: int, timeout: float | None) -> None:
        exclusive = not self.shared
        try:
            with anyio.fail_after(timeout):
                await self._bridge.run(lambda: ofd_lock(fd, 0, 0, exclusive=exclusive, wait=True))
        except BaseException as exc:
            # The interrupted thread may still be in fcntl() on this fd: let it return first.
            with anyio.CancelScope(shield=True):
                await self._bridge.wait_idle()
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"lock on {self.path!r} not acquired within {timeout} s") from None
            raise

    def release(self) -> None:
        """Release the lock (closing the file releases it).

        Raises:
            RuntimeError: this object does not hold it.
        """
        fd = self._fd
        if fd < 0:
            raise RuntimeError(f"{self!r} is not held")
        self._fd = -1
        os.close(fd)

    def __del__(self) -> None:
        if self._fd >= 0:
            warnings.warn(f"unreleased {self!r}", ResourceWarning, source=self, stacklevel=1)
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _lock_interrupted(exc: BaseException) -> bool:
    return isinstance(exc, InterruptedError)


# -- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemaphoreInfo(ObjectInfo):
    """One semaphore (set) on this machine, as :func:`list_semaphores` reports it.

    ``name`` is "/name" for POSIX, the key in hex for System V; ``count`` is
    the current value (POSIX) or the number of semaphores in the set (System V).
    """

    count: int | None


def _posix_semaphores() -> list[SemaphoreInfo]:
    found = []
    try:
        entries = list(os.scandir(_SHM_DIR))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.startswith("sem."):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        name = "/" + entry.name[4:]
        try:
            sem = posix_ipc.Semaphore(name)
            try:
                count: int | None = int(sem.value)
            finally:
                sem.close()
        except (posix_ipc.Error, OSError):
            count = None
        found.append(SemaphoreInfo("posix", name, None, None, st.st_uid, stat.S_IMODE(st.st_mode), count))
    return found


def list_semaphores() -> list[SemaphoreInfo]:
    """Every POSIX named semaphore (``/dev/shm/sem.*``) and System V semaphore set
    (``/proc/sysvipc/sem``) this process can see, with owner, mode and count."""
    return _posix_semaphores() + list_sysv("sem", SemaphoreInfo, "nsems")
