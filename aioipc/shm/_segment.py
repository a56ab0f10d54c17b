"""The ring's segment: its layout, its files, and creating or attaching it.

The segment ``/dev/shm/NAME`` and its two doorbell FIFOs (``NAME.bell-c``,
``NAME.bell-a``) are made by :func:`make_ring` and attached by
:func:`attach_ring`; a side waits on its doorbell through :class:`Doorbell`.
:mod:`aioipc.shm._ring` keeps the rules they serve.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import platform
import struct
import uuid

import anyio
import anyio.lowlevel

from .._core.errors import PeerDied, RingInUse
from .._core.fdio import FdHandle
from .._core.locks import ofd_lock, ofd_locked
from .._core.naming import Kind

__all__ = [
    "Doorbell",
    "HEADER",
    "KIND",
    "W_CAPACITY",
    "W_CLOSED",
    "Sides",
    "attach_ring",
    "check_machine",
    "check_name",
    "is_ring",
    "make_ring",
    "ring_files",
    "ring_is_stale",
    "segment_path",
]

_SHM_DIR = "/dev/shm"
_MAGIC = int.from_bytes(b"aioipcR1", "little")
_VERSION = 1
HEADER = 4096

# header words (uint64)
_W_MAGIC, _W_VERSION, W_CAPACITY, _W_CREATOR, _W_ATTACHER, _W_ATTACHED, W_CLOSED = range(7)
_LOCK_CREATOR, _LOCK_ATTACHER = 0, 1


def check_machine() -> None:
    """Refuse other machines: the ring relies on x86-64's ordering of plain loads and stores.

    Raises:
        NotImplementedError: not x86-64.
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        raise NotImplementedError("shared-memory rings need an x86-64 machine")


# -- files --------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """``name`` if it is a good shared-memory name ("/name").

    Raises:
        ValueError: not one '/' followed by other characters.
    """
    if not name.startswith("/") or "/" in name[1:] or len(name) < 2 or len(name) > 240 or "\0" in name:
        raise ValueError(f"bad shared-memory name {name!r}: one '/' followed by up to 239 other characters")
    return name


KIND = Kind("ring", "shm", check_name)


def segment_path(name: str) -> str:
    """``/name`` -> the file backing the POSIX shared-memory object.

    Raises:
        ValueError: not one '/' followed by other characters.
    """
    return _SHM_DIR + check_name(name)


def ring_files(name: str) -> tuple[str, str, str]:
    """The segment and the two doorbell FIFOs of ring ``name``: (segment, creator's bell, attacher's bell)."""
    path = segment_path(name)
    return path, path + ".bell-c", path + ".bell-a"


def is_ring(fd: int) -> bool:
    """Whether the open segment ``fd`` holds an aioipc ring."""
    head = os.pread(fd, 16, 0)
    return len(head) == 16 and struct.unpack("<QQ", head) == (_MAGIC, _VERSION)


def ring_is_stale(fd: int) -> bool:
    """Whether no live process holds either side of the open ring segment ``fd``."""
    return not ofd_locked(fd, _LOCK_CREATOR, 2)


Sides = tuple[int, mmap.mmap, int, int]  # segment fd, its mapping, our doorbell, the peer's doorbell


def make_ring(name: str, capacity: int, mode: int) -> Sides:
    """Create ring ``name`` exclusively: doorbells, then the segment, published by ``link``."""
    path, bell_c, bell_a = ring_files(name)
    made: list[str] = []
    fds: list[int] = []
    try:
        for bell in (bell_c, bell_a):
            os.mkfifo(bell, 0o600)
            made.append(bell)
            os.chmod(bell, mode)
        temporary = f"{_SHM_DIR}/.{name[1:]}.{uuid.uuid4().hex}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fds.append(fd)
        made.append(temporary)
        os.fchmod(fd, mode)
        os.ftruncate(fd, HEADER + 2 * capacity)
        os.pwrite(fd, struct.pack("<6Q", _MAGIC, _VERSION, capacity, os.getpid(), 0, 0), 0)
        ofd_lock(fd, _LOCK_CREATOR, 1, exclusive=True, wait=False)
        bell_fd = os.open(bell_c, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        fds.append(bell_fd)
        # Read-write: we hold a writer of the peer's bell from the start, so
        # the peer's read end hangs up exactly when we are gone.
        peer_fd = os.open(bell_a, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        fds.append(peer_fd)
        memory = mmap.mmap(fd, HEADER + 2 * capacity)
        try:
            os.link(temporary, path)  # publish, exclusively
        except BaseException:
            memory.close()
            raise
        os.unlink(temporary)
    except BaseException:
        for fd in fds:
            os.close(fd)
        for file in made:
            try:
                os.unlink(file)
            except FileNotFoundError:
                pass
        raise
    return fd, memory, bell_fd, peer_fd


def _creator_died(name: str) -> str:
    return f"the creator of ring {name!r} died; remove what it left with `{KIND.cleanup(name)}`"


def attach_ring(name: str) -> Sides:
    """Attach ring ``name`` as its one peer (``create``'s counterpart)."""
    path, bell_c, bell_a = ring_files(name)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    fds = [fd]
    try:
        if not is_ring(fd):
            raise ValueError(f"{name!r} is not an aioipc ring")
        capacity = struct.unpack("<Q", os.pread(fd, 8, 8 * W_CAPACITY))[0]
        size = HEADER + 2 * capacity
        if os.fstat(fd).st_size != size:
            raise ValueError(f"{name!r} is a damaged ring (size does not match its header)")
        if not ofd_lock(fd, _LOCK_ATTACHER, 1, exclusive=True, wait=False):
            raise RingInUse(f"ring {name!r} already has its peer attached")
        memory = mmap.mmap(fd, size)
        words = memoryview(memory)[:HEADER].cast("Q")
        try:
            if words[_W_ATTACHED]:
                raise RingInUse(f"ring {name!r} was attached before; a ring links one pair only")
            if not ofd_locked(fd, _LOCK_CREATOR, 1) and not words[W_CLOSED]:
                raise PeerDied(_creator_died(name))
            bell_fd = os.open(bell_a, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            fds.append(bell_fd)
            peer_fd = -1  # a creator that closed cleanly (persist): nobody to ring
            try:
                peer_fd = os.open(bell_c, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                if not words[W_CLOSED]:
                    raise PeerDied(_creator_died(name)) from None
            if peer_fd >= 0:
                fds.append(peer_fd)
            words[_W_ATTACHER] = os.getpid()
            words[_W_ATTACHED] = 1
        except BaseException:
            words.release()
            memory.close()
            raise
        words.release()
    except BaseException:
        for each in fds:
            os.close(each)
        raise
    return fd, memory, bell_fd, peer_fd


# -- the doorbell ---------------------------------------------------------------------------


def _wake_all(waiters: list[asyncio.Future[None]], error: BaseException | None = None) -> None:
    for waiter in waiters:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


class Doorbell:
    """The read end of this side's doorbell FIFO; any number of tasks may wait on it.

    Watched through its :class:`FdHandle` from the first wait on (not per
    wait: the peer rings only while we sleep) until it hangs up.
    """

    def __init__(self, fd: int) -> None:
        self._handle = FdHandle(fd)
        self.hung_up = False
        self._watched = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def fd(self) -> int:
        return self._handle.fd

    def _on_readable(self) -> None:
        fd = self._handle.fd
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                break
            if len(data) == 4096:
                continue  # maybe more
            if not data:
                self.hung_up = True
                self._handle.watch_readable(None)
            break
        waiters, self._waiters = self._waiters, []
        _wake_all(waiters)

    async def wait(self) -> None:
        """Park until the bell rings or hangs up (returns at once if it hung up)."""
        handle = self._handle
        if handle.closed:
            raise anyio.ClosedResourceError
        if self.hung_up:
            await anyio.lowlevel.checkpoint()
            return
        if not self._watched:
            handle.watch_readable(self._on_readable)
            self._watched = True
        waiter: asyncio.Future[None] = handle.loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def close(self) -> None:
        if self._handle.closed:
            return
        self._handle.close()
        waiters, self._waiters = self._waiters, []
        _wake_all(waiters, anyio.ClosedResourceError())
