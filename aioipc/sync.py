"""Semaphores and file locks between processes, awaited without blocking the loop.

- :class:`Semaphore`: a POSIX named semaphore (``sem_open``), shared by name
  with any process, C programs included.
- :class:`FileLock`: an fcntl record lock on a file, exclusive or shared,
  that the kernel releases when its holder dies.

Neither has a file descriptor an event loop can poll, so a contended
``acquire()`` waits in a bridge thread that blocks in the kernel
(``sem_timedwait``, ``F_OFD_SETLKW``) and wakes the loop with
``call_soon_threadsafe``: no sleep-polling, an idle waiter costs no CPU.
Uncontended acquires never start a thread.

Rule 1: a cancelled (or timed-out) ``acquire()`` never loses or leaks a
unit: if the bridge thread gets the unit after nobody wants it any more, it
gives it straight back.
Rule 2: the kernel object is closed only once no bridge thread is blocked
on it, so a close can never pull the memory (or fd) from under a waiter.

Example::

    async with await aioipc.sync.Semaphore.open("/jobs", create=True, initial=4) as sem:
        async with sem:                      # acquire ... release
            await do_the_work()

    async with aioipc.sync.FileLock("/var/lib/app/state.lock"):
        update_the_state_file()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import stat
import struct
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import anyio
import anyio.lowlevel
import posix_ipc

from ._core.sysvipc import sysvipc_table

__all__ = ["FileLock", "Semaphore", "SemaphoreInfo", "list_semaphores", "unlink"]

T = TypeVar("T")

_SHM_DIR = "/dev/shm"


# -- the bridge: one daemon thread per contended wait ---------------------------------------


class _Waiter:
    """A blocking call running in a daemon thread, awaited by one task."""

    def __init__(self, call: Callable[[], T], undo: Callable[[T], None], on_done: Callable[[], None]) -> None:
        self._call = call
        self._undo = undo
        self._on_done = on_done
        self._lock = threading.Lock()
        self._wanted = True
        self._loop = asyncio.get_running_loop()
        self.future: asyncio.Future[object] = self._loop.create_future()
        threading.Thread(target=self._run, daemon=True, name="aioipc-bridge").start()

    def _run(self) -> None:
        try:
            result: object = self._call()
            error: BaseException | None = None
        except BaseException as exc:
            result, error = None, exc
        try:
            with self._lock:
                wanted = self._wanted
                if wanted:
                    try:
                        self._loop.call_soon_threadsafe(self._deliver, result, error)
                    except RuntimeError:  # the loop is closed: nobody will take it
                        wanted = False
            if not wanted and error is None:
                self._undo(result)  # type: ignore[arg-type]
        finally:
            self._on_done()

    def _deliver(self, result: object, error: BaseException | None) -> None:
        if self.future.done():
            if error is None:
                self._undo(result)  # type: ignore[arg-type]
            return
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)

    def abandon(self, error: BaseException | None = None) -> None:
        """The awaiting task gave up (or the handle closed): a unit got later is given back."""
        with self._lock:
            self._wanted = False
        future = self.future
        if future.done():
            if not future.cancelled() and future.exception() is None:
                self._undo(future.result())  # type: ignore[arg-type]
        elif error is not None:
            future.set_exception(error)
        else:
            future.cancel()


class _Bridge:
    """Runs blocking acquires in threads and defers the final close until none is blocked.

    This is not :class:`aioipc._core.bridge.Bridge`, and the two cannot become one
    class with an option without weakening one of them:

    - That bridge runs one call at a time in one thread, in order; here
      several tasks may wait on one semaphore at once, each with its own
      timeout, so each contended wait has its own thread. A cancelled wait
      that is not interrupted would hold up every call queued behind it.
    - That bridge stops a cancelled call with ``SIGURG`` and ``EINTR``. The
      waits here cannot be stopped so: Python retries ``fcntl`` after
      ``EINTR`` (PEP 475), and ``sem_timedwait`` and ``semtimedop`` are
      retried too, as the caller's timeout still runs. So an abandoned wait
      runs to its end and a unit it gets then is given back (``undo``).
    - Because an abandoned wait may still be blocked in the kernel, the
      kernel object (the semaphore handle, the locked fd) is closed only when
      the last thread has returned; that bridge's owner closes it at once.
    """

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._mutex = threading.Lock()
        self._running = 0
        self._closing = False
        self._waiters: set[_Waiter] = set()

    async def run(self, call: Callable[[], T], undo: Callable[[T], None]) -> T:
        """Await ``call()`` run in a thread; if abandoned, ``undo(result)`` once it succeeds."""
        if self._closing:
            raise anyio.ClosedResourceError
        with self._mutex:
            self._running += 1
        waiter = _Waiter(call, undo, self._thread_done)
        self._waiters.add(waiter)
        try:
            return await waiter.future  # type: ignore[return-value]
        except BaseException:
            waiter.abandon()
            raise
        finally:
            self._waiters.discard(waiter)

    def _thread_done(self) -> None:
        with self._mutex:
            self._running -= 1
            close_now = self._closing and self._running == 0
        if close_now:
            self._close()

    def close(self) -> None:
        """Wake waiting tasks with ``ClosedResourceError``; close now if no thread is blocked,
        else when the last one returns."""
        for waiter in list(self._waiters):
            waiter.abandon(anyio.ClosedResourceError())
        with self._mutex:
            if self._closing:
                return
            self._closing = True
            close_now = self._running == 0
        if close_now:
            self._close()


# -- POSIX named semaphores ------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not name.startswith("/") or "/" in name[1:] or len(name) < 2 or len(name) > 251 or "\0" in name:
        raise ValueError(f"bad semaphore name {name!r}: one '/' followed by up to 250 other characters")
    return name


class _BridgedSemaphore:
    """What POSIX and System V semaphore handles share: acquire through a bridge, close once.

    A subclass says how to try, wait for, give back and remove a unit, and
    what its kernel object is called in errors; the waiting, the timeouts,
    the cancellation rule (a unit got after nobody wants it is given back)
    and the end of life are here.
    """

    owned: bool
    _sem: Any  # a posix_ipc or sysv_ipc semaphore: both have ``.value``
    _label: str  # what errors call it: "semaphore '/name'"
    _closed: bool
    _bridge: _Bridge

    def _try_acquire(self) -> bool:
        raise NotImplementedError

    def _blocking_acquire(self, timeout: float | None) -> Callable[[], bool]:
        """The call that waits (in a bridge thread) for a unit; ``False`` if ``timeout`` ran out."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _remove(self) -> None:
        """Remove the kernel object (this handle created it); one already gone is no error."""
        raise NotImplementedError

    @property
    def value(self) -> int:
        """The current count (a snapshot: other processes may change it at once)."""
        self._check()
        return int(self._sem.value)

    def _check(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    def _give_back(self, got: bool) -> None:
        if got:
            self._release()

    async def acquire(self, timeout: float | None = None) -> None:
        """Take one unit, waiting up to ``timeout`` seconds (``None``: for ever).

        Raises:
            TimeoutError: no unit came within ``timeout``.
            anyio.ClosedResourceError: this handle is closed.

        Cancelling it never leaks a unit: one that arrives afterwards is released.
        """
        self._check()
        if self._try_acquire():
            await _checkpoint_or_release(self._release)
            return
        if timeout is not None and timeout <= 0:
            raise TimeoutError(f"{self._label} not acquired")
        got = await self._bridge.run(self._blocking_acquire(timeout), self._give_back)
        if not got:
            raise TimeoutError(f"{self._label} not acquired within {timeout} s")

    def release(self) -> None:
        """Give one unit back (to whichever process waits first).

        Raises:
            anyio.ClosedResourceError: this handle is closed.
        """
        self._check()
        self._release()

    async def aclose(self) -> None:
        """Close the handle (idempotent), and remove the semaphore if this handle created it.

        A task of this process waiting in ``acquire()`` gets ``ClosedResourceError``.
        """
        if self._closed:
            return
        self._closed = True
        if self.owned:
            self._remove()
        self._bridge.close()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Semaphore(_BridgedSemaphore):
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

    def __init__(self, sem: posix_ipc.Semaphore, *, owned: bool) -> None:
        self.name: str = sem.name
        self.owned = owned
        self._sem = sem
        self._label = f"semaphore {self.name!r}"
        self._closed = False
        self._bridge = _Bridge(sem.close)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"value={self.value}"
        return f"<Semaphore {self.name!r} {state} owned={self.owned}>"

    @classmethod
    async def open(
        cls,
        name: str,
        create: bool = False,
        initial: int = 1,
        *,
        mode: int = 0o600,
        exist_ok: bool = False,
        persist: bool = False,
    ) -> Semaphore:
        """Open the semaphore ``name`` ("/name"), or create it with ``initial`` units.

        Args:
            create: create it (exclusively: an existing one is ``FileExistsError``
                unless ``exist_ok=True``, and is then only opened).
            mode: permission bits of a created semaphore, exactly (0600: only this user).
            persist: a created semaphore outlives this handle's ``aclose()``.

        Raises:
            ValueError: bad name or a negative ``initial``.
            FileNotFoundError: no such semaphore (``create=False``).
            FileExistsError: it exists (``create=True``).
            PermissionError: its mode forbids it.
        """
        # first: cancelled here, nothing exists yet to leak
        await anyio.lowlevel.checkpoint()
        _check_name(name)
        if initial < 0:
            raise ValueError("initial must be >= 0")
        owned = False
        try:
            if create:
                try:
                    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode, initial)
                    owned = not persist
                    # sem_open applied the umask to what we asked, never loosening it.
                    os.chmod(os.path.join(_SHM_DIR, "sem." + name[1:]), mode)
                except posix_ipc.ExistentialError:
                    if not exist_ok:
                        raise FileExistsError(errno.EEXIST, "semaphore exists", name) from None
                    sem = posix_ipc.Semaphore(name)
            else:
                sem = posix_ipc.Semaphore(name)
        except posix_ipc.ExistentialError:
            raise FileNotFoundError(errno.ENOENT, "no such semaphore", name) from None
        except posix_ipc.PermissionsError:
            raise PermissionError(errno.EACCES, "permission denied", name) from None
        return cls(sem, owned=owned)

    def _try_acquire(self) -> bool:
        try:
            self._sem.acquire(0)
        except posix_ipc.BusyError:
            return False
        return True

    def _blocking_acquire(self, timeout: float | None) -> Callable[[], bool]:
        sem = self._sem

        def wait() -> bool:
            while True:
                try:
                    sem.acquire(timeout)
                except posix_ipc.BusyError:
                    return False
                except posix_ipc.SignalError:
                    continue
                return True

        return wait

    def _release(self) -> None:
        self._sem.release()

    def _remove(self) -> None:
        try:
            self._sem.unlink()
        except posix_ipc.ExistentialError:
            pass


async def _checkpoint_or_release(release: Callable[[], None]) -> None:
    """A cancellation point after a fast acquire; cancelled here, the unit is given back."""
    try:
        await anyio.lowlevel.checkpoint()
    except BaseException:
        release()
        raise


def unlink(name: str) -> None:
    """Remove the POSIX semaphore ``name``; processes that have it open keep using it.

    Raises:
        FileNotFoundError: no such semaphore.
    """
    try:
        posix_ipc.unlink_semaphore(_check_name(name))
    except posix_ipc.ExistentialError:
        raise FileNotFoundError(errno.ENOENT, "no such semaphore", name) from None


# -- fcntl record locks ----------------------------------------------------------------------

# struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = struct.Struct("hhqqi4x")


def _ofd_lock(fd: int, start: int, length: int, *, exclusive: bool, wait: bool) -> bool:
    """Place an open-file-description record lock; ``False`` if held elsewhere and not ``wait``.

    OFD locks belong to the open file, not the process: two handles in one
    process exclude each other, closing another fd of the file keeps them,
    and they conflict with classic ``fcntl(F_SETLK)`` locks of C programs.
    """
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    request = _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)
    while True:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, request)
            return True
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES) and not wait:
                return False
            raise


def _ofd_unlock(fd: int, start: int, length: int) -> None:
    """Remove this open file's record lock on the range."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, start, length, 0))


def _ofd_locked(fd: int, start: int, length: int) -> bool:
    """Whether some other open file (any process) holds a lock on the range."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0))
    return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)


class FileLock:
    """An fcntl record lock on the whole of ``path``, exclusive or shared.

    ``async with FileLock(path):`` acquires and releases. The file is
    opened on the first :meth:`acquire` (created with mode 0600 if missing,
    never truncated) and closed on :meth:`release`.

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
        self._bridge: _Bridge | None = None

    def __repr__(self) -> str:
        kind = "shared" if self.shared else "exclusive"
        return f"<FileLock {self.path!r} {kind} {'held' if self.locked else 'free'}>"

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd >= 0

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{self.path!r} is not a regular file")
        return fd

    async def acquire(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout`` seconds, ``None``: for ever) until this process holds the lock.

        Raises:
            TimeoutError: another holder kept it for ``timeout`` seconds.
            RuntimeError: this object already holds it.
            OSError: the file cannot be opened (``PermissionError``, ...).
        """
        if self._fd >= 0:
            raise RuntimeError(f"{self!r} is already held (FileLock is not reentrant)")
        fd = self._open()
        exclusive = not self.shared
        try:
            if not _ofd_lock(fd, 0, 0, exclusive=exclusive, wait=False):
                if timeout is not None and timeout <= 0:
                    raise TimeoutError(f"lock on {self.path!r} not acquired")
                # The fd goes to a bridge that closes it once no thread waits on it.
                fd_owner, fd = fd, -1
                bridge = _Bridge(lambda: os.close(fd_owner))
                try:
                    with anyio.fail_after(timeout):
                        await bridge.run(
                            lambda: _ofd_lock(fd_owner, 0, 0, exclusive=exclusive, wait=True),
                            lambda _: _ofd_unlock(fd_owner, 0, 0),
                        )
                except BaseException:
                    bridge.close()
                    raise
                self._fd, self._bridge = fd_owner, bridge
                return
            await anyio.lowlevel.checkpoint()
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Release the lock (closing the file releases it).

        Raises:
            RuntimeError: this object does not hold it.
        """
        fd, bridge = self._fd, self._bridge
        if fd < 0:
            raise RuntimeError(f"{self!r} is not held")
        self._fd, self._bridge = -1, None
        if bridge is not None:
            bridge.close()
        else:
            os.close(fd)

    async def __aenter__(self) -> FileLock:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd >= 0 and self._bridge is None:
            warnings.warn(f"unreleased {self!r}", ResourceWarning, source=self, stacklevel=1)
            with contextlib.suppress(OSError):
                os.close(self._fd)


# -- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemaphoreInfo:
    """One semaphore (set) on this machine, as :func:`list_semaphores` reports it.

    ``name`` is "/name" for POSIX, the key in hex for System V; ``count`` is
    the current value (POSIX) or the number of semaphores in the set (System V).
    """

    kind: Literal["posix", "sysv"]
    name: str
    key: int | None
    id: int | None
    uid: int
    mode: int
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


def _sysv_semaphores() -> list[SemaphoreInfo]:
    try:
        rows = sysvipc_table("sem")
    except FileNotFoundError:
        return []
    return [
        SemaphoreInfo(
            "sysv",
            f"{row['key'] & 0xFFFFFFFF:#010x}",
            row["key"],
            row["semid"],
            row["uid"],
            row["perms"] & 0o777,
            row["nsems"],
        )
        for row in rows
    ]


def list_semaphores() -> list[SemaphoreInfo]:
    """Every POSIX named semaphore (``/dev/shm/sem.*``) and System V semaphore set
    (``/proc/sysvipc/sem``) this process can see, with owner, mode and count."""
    return _posix_semaphores() + _sysv_semaphores()
