"""Shared memory: POSIX segments, memory-mapped files, and the shared-memory :class:`Ring`.

- :class:`SharedMemory`: a POSIX shared-memory object (``/dev/shm/NAME``,
  what ``shm_open`` opens, so C programs share it) with ``.buf``, a
  ``memoryview`` of the memory.
- :func:`map_file`: a file mapped into memory, for state shared through a file.
- :class:`Ring`: a duplex message channel in shared memory between two
  processes, the fastest path between them; also ``aioipc.connect("shm:/name")``
  (attach) and ``aioipc.serve("shm:/name", handler)`` (create, then call
  ``handler(ring)``).
- :func:`list_segments` and :func:`remove_stale_rings` for ``aioipc ls`` / ``aioipc rm --stale``.

Ownership is explicit: what a handle created is removed when it closes
(unless ``persist=True``), what it attached is never removed by it; there is
no resource tracker that removes a segment under a live peer.

Example::

    async with await aioipc.shm.SharedMemory.create("/state", 4096) as shm:
        shm.buf[:5] = b"hello"           # another process: SharedMemory.attach("/state")
"""

from __future__ import annotations

import mmap
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.abc
import anyio.lowlevel

from .._core.framing import DEFAULT_MAX_SIZE
from .._core.locks import ofd_locked
from .._core.memory import MemoryHandle
from .._core.naming import Kind, create_or_open, open_existing, open_file
from .._core.schemes import Address
from .._core.server import Server
from .._core.sysvipc import ObjectInfo, list_sysv
from ._lanes import DEFAULT_SPIN
from ._ring import DEFAULT_CAPACITY, Ring, RingInUse
from ._segment import check_name, is_ring, ring_files, ring_is_stale, segment_path

__all__ = [
    "MappedMemory",
    "Ring",
    "RingInUse",
    "SegmentInfo",
    "SharedMemory",
    "list_segments",
    "map_file",
    "remove_stale_rings",
    "unlink",
]


class MappedMemory(MemoryHandle):
    """Memory mapped from a file; ``.buf`` is a writable ``memoryview`` of it.

    ``aclose()`` unmaps it (and removes the file if this handle created it
    and ``persist`` was not asked). Release every ``memoryview`` you made
    from ``.buf`` first, or ``aclose()`` raises ``BufferError``.
    """

    def __init__(self, path: str, fd: int, size: int, *, owned: bool) -> None:
        self.path = path
        self.size = size
        self.owned = owned
        self._mmap = mmap.mmap(fd, size) if size else None
        os.close(fd)
        self.buf = self._view()
        self._closed = False

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self.path!r} size={self.size} owned={self.owned}{state}>"

    def flush(self) -> None:
        """Write dirty pages to the file now (``msync``); the kernel does it eventually anyway."""
        if self._mmap is not None and not self._closed:
            self._mmap.flush()

    def _view(self) -> memoryview:
        return memoryview(self._mmap) if self._mmap is not None else memoryview(b"").toreadonly()

    def _unmap(self) -> None:
        if self._mmap is not None:
            self._mmap.close()  # BufferError while views of it live

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


_KIND = Kind("shared-memory segment", "shm", check_name)
_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW


def _open_segment(name: str) -> int:
    fd = os.open(segment_path(name), _FLAGS)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{name!r} is not a shared-memory segment")
    return fd


def _discard(fd: int, name: str) -> None:
    """Close and remove a segment this call created."""
    os.close(fd)
    os.unlink(segment_path(name))


class SharedMemory(MappedMemory):
    """A POSIX shared-memory segment; get one with :meth:`create` or :meth:`attach`.

    ``.buf`` is a ``memoryview`` of the memory; ``.name`` is "/name".

    Caveats:
        A segment holds no lock and no notification: pair it with a
        :class:`aioipc.sync.Semaphore` or a :class:`aioipc.sync.FileLock`, or
        use a :class:`Ring` for messages.
    """

    def __init__(self, name: str, fd: int, size: int, *, owned: bool) -> None:
        super().__init__(segment_path(name), fd, size, owned=owned)
        self.name = name

    @classmethod
    async def create(
        cls, name: str, size: int, *, exist_ok: bool = False, mode: int = 0o600, persist: bool = False
    ) -> SharedMemory:
        """Create segment ``name`` of ``size`` bytes (zeroed), with exactly ``mode``.

        Args:
            exist_ok: attach to an existing segment instead of failing (it is
                then not removed on close, and must be at least ``size`` bytes).
            persist: leave the segment after ``aclose()``.

        Raises:
            FileExistsError: it exists (and not ``exist_ok``).
            ValueError: bad name, negative size, or an existing segment that is too small.
        """
        if size < 0:
            raise ValueError("size must be >= 0")

        def make(name: str) -> int:
            fd = os.open(segment_path(name), _FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                _discard(fd, name)
                raise
            return fd

        def existing(name: str) -> int:
            fd = _open_segment(name)
            if (found := os.fstat(fd).st_size) < size:
                os.close(fd)
                raise ValueError(f"segment {name!r} exists with {found} bytes, under {size}")
            return fd

        def chmod(fd: int) -> None:  # now exactly as asked
            os.fchmod(fd, mode)

        def discard(fd: int) -> None:
            _discard(fd, name)

        fd, owned = await create_or_open(
            _KIND, name, make, existing, exist_ok=exist_ok, persist=persist, exact_mode=chmod, discard=discard
        )
        return cls._of(name, fd, owned=owned)

    @classmethod
    async def attach(cls, name: str) -> SharedMemory:
        """Attach to the existing segment ``name``, all of it; closing never removes it.

        Raises:
            FileNotFoundError: no such segment.
            PermissionError: its mode forbids it.
        """
        return cls._of(name, await open_existing(_KIND, name, _open_segment), owned=False)

    @classmethod
    def _of(cls, name: str, fd: int, *, owned: bool) -> SharedMemory:
        """The handle of the open segment ``fd``, mapped whole (the fd is closed either way)."""
        try:
            return cls(name, fd, os.fstat(fd).st_size, owned=owned)
        except BaseException:
            if owned:
                _discard(fd, name)
            else:
                os.close(fd)
            raise

    def __repr__(self) -> str:
        return f"<SharedMemory {self.name!r} size={self.size} owned={self.owned}>"


async def map_file(
    path: str | os.PathLike[str], size: int | None = None, *, mode: int = 0o600
) -> MappedMemory:
    """Map ``path`` into memory (shared with every process mapping it); create it if missing.

    Args:
        size: bytes to map; a shorter file is extended with zeros (never
            shrunk). ``None`` maps the file as it is.
        mode: permission bits when the file is created (exactly; it is created with ``O_EXCL``).

    Raises:
        ValueError: ``path`` is not a regular file, or ``size`` is negative.
        OSError: as ``open()`` raises it; ``ELOOP``: ``path`` is a symbolic
            link, which is never followed.

    Caveats:
        The handle never removes the file. Another process that truncates
        the file makes access beyond the new end crash with SIGBUS.

    Example::

        async with await aioipc.shm.map_file("counters.bin", 4096) as m:  # created if missing
            m.buf[0] += 1
    """
    # first: cancelled here, nothing exists yet to leak
    await anyio.lowlevel.checkpoint()
    path = os.fspath(path)
    if size is not None and size < 0:
        raise ValueError("size must be >= 0")
    fd, _ = open_file(path, mode=mode)
    try:
        current = os.fstat(fd).st_size
        if size is None:
            size = current
        elif current < size:
            os.ftruncate(fd, size)
        memory = MappedMemory(path, fd, size, owned=False)
    except BaseException:
        os.close(fd)
        raise
    return memory


def unlink(name: str) -> None:
    """Remove segment (or ring) ``name``; processes that attached it keep their memory.

    Raises:
        FileNotFoundError: no such segment.
    """
    path, bell_c, bell_a = ring_files(name)
    os.unlink(path)
    for bell in (bell_c, bell_a):
        try:
            os.unlink(bell)
        except FileNotFoundError:
            pass


# -- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo(ObjectInfo):
    """One shared-memory segment on this machine, as :func:`list_segments` reports it.

    ``name`` is "/name" for POSIX and the key in hex for System V;
    ``attached`` is the kernel's attach count (System V), the number of live
    sides (a ring), or ``None`` (a plain POSIX segment: the kernel does not count).
    """

    size: int
    attached: int | None
    ring: bool = False


def _posix_segment(entry: os.DirEntry[str]) -> SegmentInfo | None:
    if entry.name.startswith(("sem.", ".")):
        return None
    try:
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None
        ring, attached = False, None
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except PermissionError:
            fd = -1
        if fd >= 0:
            try:
                ring = is_ring(fd)
                if ring:
                    attached = _live_sides(fd)
            finally:
                os.close(fd)
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    return SegmentInfo("posix", "/" + entry.name, None, None, st.st_uid, mode, st.st_size, attached, ring)


def _live_sides(fd: int) -> int:
    return sum(ofd_locked(fd, byte, 1) for byte in (0, 1))


def list_segments() -> list[SegmentInfo]:
    """Every POSIX segment in ``/dev/shm`` (rings marked) and System V segment
    (``/proc/sysvipc/shm``) visible here, with owner, mode, size and attach count."""
    found = []
    try:
        entries = list(os.scandir("/dev/shm"))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        info = _posix_segment(entry)
        if info is not None:
            found.append(info)
    return found + list_sysv("shm", SegmentInfo, "size", "nattch")


def remove_stale_rings() -> list[str]:
    """Remove the rings whose processes are all dead; return their names.

    A ring counts as stale when no process holds either side's lock (the
    kernel drops them when a process dies). Rings of other users that this
    user cannot open are left alone. Doorbell FIFOs whose segment is gone
    (a process killed inside ``Ring.create()``) go too, once 10 s old.
    """
    removed = []
    for info in list_segments():
        if not info.ring:
            continue
        try:
            fd = os.open(segment_path(info.name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, PermissionError):
            continue
        try:
            stale = is_ring(fd) and ring_is_stale(fd)
        finally:
            os.close(fd)
        if stale:
            try:
                unlink(info.name)
            except (FileNotFoundError, PermissionError):
                continue
            removed.append(info.name)
    return removed + _remove_orphan_bells()


_ORPHAN_AGE = 10  # seconds: a Ring.create() in progress makes its doorbells just before its segment


def _remove_orphan_bells() -> list[str]:
    """Remove the doorbell FIFOs of this user's rings whose segment is gone (a crash inside
    ``Ring.create()``); return them as ``/name.bell-c``."""
    shm_dir = os.path.dirname(segment_path("/x"))
    removed = []
    for entry in sorted(os.listdir(shm_dir)):
        if not entry.endswith((".bell-c", ".bell-a")) or os.path.exists(os.path.join(shm_dir, entry[:-7])):
            continue
        path = os.path.join(shm_dir, entry)
        try:
            st = os.lstat(path)
            if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.getuid():
                continue
            if st.st_mtime > time.time() - _ORPHAN_AGE:
                continue
            os.unlink(path)
        except (FileNotFoundError, PermissionError):
            continue
        removed.append("/" + entry)
    return removed


# -- addresses --------------------------------------------------------------------------------


def remove_address(address: Address) -> None:
    """``aioipc rm shm:/name``: :func:`unlink` the ring or segment and its doorbells."""
    unlink(address.path)


async def connect_address(
    address: Address, *, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None, **options: Any
) -> Ring:
    """``connect("shm:/name")``: attach to the ring (the core retries it within ``timeout``)."""
    return await Ring.attach(address.path, max_size=max_size, **options)


async def serve_address(
    address: Address,
    handler: Callable[[Ring], Awaitable[object]],
    *,
    framing: str | None,
    max_size: int = DEFAULT_MAX_SIZE,
    capacity: int = DEFAULT_CAPACITY,
    mode: int = 0o600,
    spin: float = DEFAULT_SPIN,
) -> Server:
    """``serve("shm:/name", handler)``: create the ring and call ``handler(ring)`` at once."""
    ring = await Ring.create(address.path, capacity, mode=mode, max_size=max_size, spin=spin)
    return Server.single(str(address), handler, ring)
