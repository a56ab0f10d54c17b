"""Files as IPC: await changes to a file or directory (inotify), and replace a file atomically.

Rule 1: the inotify fd is a plain non-blocking fd owned by the core's
``FdHandle``: a watch parks on the loop until the kernel has events, so an
idle watch costs no CPU and no thread.
Rule 2: memory is bounded. A watch reads at most 64 KiB of events at a
time and reads again only when every change of that batch was handed
out; events the consumer has not reached wait in the kernel's queue
(``fs.inotify.max_queued_events``), and when that overflows the loss is
reported as a change of kind ``"overflow"``, never hidden.
Rule 3: a rename is one change when both names lie inside the watch. The
kernel reports it as ``IN_MOVED_FROM`` followed by ``IN_MOVED_TO`` with one
cookie; the two are paired here. A name moved out of the watch is reported
as ``"deleted"``, a name moved in as ``"created"``.

Why a small ctypes binding: the inotify libraries on PyPI either register
the fd with the loop themselves (asyncinotify, aionotify: a second owner of
readiness beside the core's ``FdHandle``) or block (inotify_simple); the
three calls needed here are a dozen lines.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import struct
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from ._core.fdio import FdHandle
from ._core.streams import Buffer, ResourceGuard

__all__ = ["KINDS", "Change", "ChangeKind", "Watch", "watch", "write_atomic"]

ChangeKind = Literal["created", "modified", "deleted", "moved", "overflow"]
KINDS: frozenset[str] = frozenset({"created", "modified", "deleted", "moved"})

# <sys/inotify.h>
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_EXCL_UNLINK = 0x4000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_MASKS = {
    "created": IN_CREATE | IN_MOVED_TO,
    "modified": IN_MODIFY | IN_ATTRIB,
    "deleted": IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF,
    "moved": IN_MOVED_FROM | IN_MOVED_TO,
}
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_SIZE = 65536

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


@dataclass(frozen=True)
class Change:
    """One change seen by :func:`watch`.

    Attributes:
        path: the absolute path that changed (for ``"moved"``, the new name;
            for ``"overflow"``, the watched path).
        kind: ``"created"``, ``"modified"`` (contents or metadata: a write,
            ``touch``, ``chmod``), ``"deleted"``, ``"moved"``, or
            ``"overflow"`` (the kernel dropped events: rescan what you watch).
        old_path: the old name of a ``"moved"`` change, else ``None``.
        is_dir: the name is a directory.
    """

    path: str
    kind: ChangeKind
    old_path: str | None = None
    is_dir: bool = False


class Watch(anyio.abc.ObjectReceiveStream[Change]):
    """An inotify watch on a directory, or on one name in its directory; made by :func:`watch`.

    ``receive()`` returns the next :class:`Change`; ``async for`` iterates
    until the watched directory is deleted. ``aclose()`` removes the
    watch and closes the fd (idempotent).
    """

    def __init__(self, path: str | os.PathLike[str], kinds: Collection[str] = KINDS) -> None:
        unknown = set(kinds) - KINDS
        if unknown:
            raise ValueError(f"unknown change kinds {sorted(unknown)}; kinds are {sorted(KINDS)}")
        self.path = os.path.abspath(os.fspath(path))
        self._kinds = frozenset(kinds)
        if os.path.isdir(self.path):
            self._directory, self._name = self.path, None
            mask = IN_ONLYDIR | IN_DELETE_SELF
        else:
            # A file is watched through its directory, so that a rename-and-replace save
            # (the new inode under the old name) is still seen.
            self._directory, name = os.path.split(self.path)
            self._name = os.fsencode(name)
            mask = IN_ONLYDIR
        for kind in self._kinds:
            mask |= _MASKS[kind]
        fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self._handle = FdHandle(fd)
        try:
            self._wd = _check(
                _libc.inotify_add_watch(fd, os.fsencode(self._directory), mask | IN_EXCL_UNLINK),
                "inotify_add_watch",
                self._directory,
            )
        except BaseException:
            self._handle.close()
            raise
        self._changes: deque[Change] = deque()
        self._guard = ResourceGuard("receiving")
        self._unclaimed = b""
        self._ended = False

    def __repr__(self) -> str:
        state = " closed" if self._handle.closed else ""
        return f"<{type(self).__name__} {self.path!r} fd={self._handle.fd}{state}>"

    def fileno(self) -> int:
        return self._handle.fd

    async def receive(self) -> Change:
        """The next change; waits on the loop (no thread) until there is one.

        Raises:
            anyio.EndOfStream: the watched directory was deleted or unmounted.
            anyio.ClosedResourceError: the watch was closed.
            anyio.BusyResourceError: another task is receiving.
        """
        with self._guard:
            while not self._changes:
                if self._ended:
                    raise anyio.EndOfStream
                data, self._unclaimed = self._unclaimed, b""
                if not data:
                    data = await self._handle.read(os.read, self._keep, _READ_SIZE)
                self._parse(data)
            await anyio.lowlevel.checkpoint()
            return self._changes.popleft()

    def receive_nowait(self) -> Change:
        """The next change if one is ready without waiting.

        Raises:
            anyio.WouldBlock: no change is ready.
            anyio.EndOfStream: the watched directory was deleted or unmounted.
            anyio.BusyResourceError: another task is receiving.
        """
        if self._guard.busy:
            raise anyio.BusyResourceError("receiving")
        while not self._changes:
            if self._ended:
                raise anyio.EndOfStream
            if self._handle.closed:
                raise anyio.ClosedResourceError
            data, self._unclaimed = self._unclaimed, b""
            if not data:
                try:
                    data = os.read(self._handle.fd, _READ_SIZE)
                except BlockingIOError:
                    raise anyio.WouldBlock from None
            self._parse(data)
        return self._changes.popleft()

    def _keep(self, data: bytes) -> None:
        self._unclaimed = data  # read by a receive that was cancelled: parsed by the next one

    def _join(self, name: bytes) -> str:
        return os.path.join(self._directory, os.fsdecode(name)) if name else self._directory

    def _inside(self, name: bytes) -> bool:
        return self._name is None or name == self._name

    def _parse(self, data: bytes) -> None:
        """Turn one read of events into changes (pairing moves by cookie) and queue them."""
        moved_from: tuple[int, bytes, int] | None = None  # (cookie, name, offset) awaiting IN_MOVED_TO
        offset = 0
        while offset + _EVENT.size <= len(data):
            start = offset
            _wd, mask, cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            name = data[start + _EVENT.size : offset].rstrip(b"\0")
            is_dir = bool(mask & IN_ISDIR)
            if moved_from is not None:
                from_cookie, from_name, _ = moved_from
                moved_from = None
                if mask & IN_MOVED_TO and cookie == from_cookie:
                    self._add_move(from_name, name, is_dir)
                    continue
                self._add(from_name, "deleted", False)
            if mask & IN_Q_OVERFLOW:
                self._changes.append(Change(self.path, "overflow"))
            elif mask & IN_IGNORED:
                self._ended = True
            elif mask & IN_MOVED_FROM:
                moved_from = (cookie, name, start)
            elif mask & (IN_CREATE | IN_MOVED_TO):
                self._add(name, "created", is_dir)
            elif mask & (IN_MODIFY | IN_ATTRIB):
                self._add(name, "modified", is_dir)
            elif mask & (IN_DELETE | IN_DELETE_SELF):
                self._add(name, "deleted", is_dir)
        if moved_from is None:
            return
        # The kernel queues both halves of a rename at once: a move-from that ends a read
        # has its pair waiting in the kernel now, or it left the watch.
        try:
            more = os.read(self._handle.fd, _READ_SIZE)
        except BlockingIOError:
            self._add(moved_from[1], "deleted", False)
        else:
            self._unclaimed = data[moved_from[2] :] + more  # parsed again, with its pair

    def _add(self, name: bytes, kind: ChangeKind, is_dir: bool) -> None:
        if not self._inside(name) or kind not in self._kinds:
            return
        change = Change(self._join(name), kind, is_dir=is_dir)
        if kind == "modified" and self._changes and self._changes[-1] == change:
            return  # a burst of writes to one file is one change
        self._changes.append(change)

    def _add_move(self, old: bytes, new: bytes, is_dir: bool) -> None:
        if self._inside(old) and self._inside(new) and "moved" in self._kinds:
            self._changes.append(Change(self._join(new), "moved", self._join(old), is_dir))
            return
        self._add(old, "deleted", is_dir)
        self._add(new, "created", is_dir)

    async def aclose(self) -> None:
        """Remove the watch and close the inotify fd (idempotent)."""
        handle = self._handle
        if not handle.closed:
            _libc.inotify_rm_watch(handle.fd, self._wd)  # EINVAL once the kernel dropped it: fine
            handle.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


def watch(path: str | os.PathLike[str], *, kinds: Collection[str] = KINDS) -> Watch:
    """Watch a directory, or one file, for changes, through inotify on the running loop.

    A directory is watched for changes to the names in it (not recursive:
    a subdirectory's creation is seen, not what happens inside it). A file
    is watched through its directory and filtered by name, so that it is
    followed across an editor's rename-and-replace save; it need not exist
    yet.

    Args:
        path: the directory or file.
        kinds: the change kinds wanted (default: all four); the kernel is
            asked only for the events these need. With ``"moved"`` left
            out, a rename is reported as ``"deleted"`` of the old name and
            ``"created"`` of the new one, as far as those are wanted.

    Raises:
        FileNotFoundError: the directory (or the file's directory) does not exist.
        OSError: ``ENOSPC`` when the user's ``fs.inotify.max_user_watches`` is used up,
            ``EMFILE`` at ``fs.inotify.max_user_instances``.
        ValueError: an unknown kind.

    Caveats:
        A rename inside the watch is one ``"moved"`` change; a name moved
        out is ``"deleted"``, one moved in is ``"created"``. ``"overflow"``
        says the kernel's queue overflowed and changes were lost: rescan.
        Changes made through other mounts of a network file system are not
        seen (inotify is local). The watch follows the directory's inode:
        if the directory itself is renamed, paths still use the old name.

    Example::

        async with aioipc.files.watch("/etc/app/conf.json") as changes:
            async for change in changes:
                if change.kind in ("created", "modified", "moved"):
                    reload(change.path)
    """
    return Watch(path, kinds)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _write_atomic(path: str, data: memoryview, mode: int) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            temp = f".{name[:200]}.{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(temp, flags, mode, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue
        try:
            try:
                os.fchmod(fd, mode)  # exactly mode, whatever the umask
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def write_atomic(path: str | os.PathLike[str], data: Buffer, *, mode: int = 0o600) -> None:
    """Replace the file at ``path`` with ``data``: a reader sees the old file or the new one, never a mix.

    Writes a temporary file in the same directory (created with ``O_EXCL``
    and ``O_NOFOLLOW``, mode ``mode``), fsyncs it, renames it over
    ``path`` and fsyncs the directory, all in a worker thread (the one
    blocking part). On any error the temporary file is removed and
    ``path`` is left as it was.

    Raises:
        FileNotFoundError: the directory does not exist.
        IsADirectoryError: ``path`` is a directory.
        OSError: as the file system reports it (``ENOSPC``, ``EACCES`` ...).

    Caveats:
        The new file is a new inode: a reader that keeps the old file open
        keeps reading the old contents, and hard links to the old file are
        not updated. A symlink at ``path`` is replaced by the file, not
        followed. A cancelled call finishes its write first (fsync cannot be
        interrupted), then raises: the file may have been replaced.

    Example::

        await aioipc.files.write_atomic("/etc/app/conf.json", json.dumps(conf).encode())
    """
    await anyio.to_thread.run_sync(_write_atomic, os.fspath(path), memoryview(data).cast("B"), mode)
