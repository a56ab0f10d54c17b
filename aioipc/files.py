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

    def __init__(
        self, path: str | os.PathLike[str], kinds: Collection[str] = KINDS, *, recursive: bool = False
    ) -> None:
        unknown = set(kinds) - KINDS
        if unknown:
            raise ValueError(f"unknown change kinds {sorted(unknown)}; kinds are {sorted(KINDS)}")
        self.path = os.path.abspath(os.fspath(path))
        self._kinds = frozenset(kinds)
        self._recursive = recursive
        self._mask = IN_ONLYDIR | IN_EXCL_UNLINK
        for kind in self._kinds:
            self._mask |= _MASKS[kind]
        if recursive:
            self._mask |= IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO  # to follow the tree's directories
        if os.path.isdir(self.path):
            directory, self._file = self.path, None
            mask = self._mask | IN_DELETE_SELF
        elif recursive:
            raise NotADirectoryError(f"a recursive watch needs a directory: {self.path}")
        else:
            # A file is watched through its directory, so that a rename-and-replace save
            # (the new inode under the old name) is still seen.
            directory, self._file = os.path.dirname(self.path), self.path
            mask = self._mask
        fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self._handle = FdHandle(fd)
        self._dirs: dict[int, str] = {}  # watch descriptor -> the directory it watches
        try:
            self._root = self._add_watch(directory, mask)
            if recursive:
                self._watch_tree(self.path, report=False)
        except BaseException:
            self._handle.close()
            raise
        self._changes: deque[Change] = deque()
        self._guard = ResourceGuard("receiving")
        self._unclaimed = b""
        self._ended = False

    def _add_watch(self, directory: str, mask: int) -> int:
        wd = _check(
            _libc.inotify_add_watch(self._handle.fd, os.fsencode(directory), mask),
            "inotify_add_watch",
            directory,
        )
        self._dirs[wd] = directory
        return wd

    def _watch_tree(self, top: str, *, report: bool) -> None:
        """Watch every directory under ``top``; with ``report``, queue what is in them as created
        (it may have appeared before the watch did)."""
        try:
            entries = list(os.scandir(top))
        except (FileNotFoundError, NotADirectoryError):
            return  # gone again: its deletion is reported by its parent
        for entry in entries:
            is_dir = entry.is_dir(follow_symlinks=False)
            if report:
                self._add(entry.path, "created", is_dir)
            if is_dir:
                try:
                    self._add_watch(entry.path, self._mask)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                self._watch_tree(entry.path, report=report)

    def _watch_new_directory(self, path: str) -> None:
        try:
            self._add_watch(path, self._mask)
        except (FileNotFoundError, NotADirectoryError):
            return  # gone again: its parent reports that
        self._watch_tree(path, report=True)

    def _forget_tree(self, top: str) -> None:
        """Stop watching ``top`` and what is under it (moved out of the watch)."""
        for wd, directory in list(self._dirs.items()):
            if wd != self._root and (directory == top or directory.startswith(top + "/")):
                _libc.inotify_rm_watch(self._handle.fd, wd)
                del self._dirs[wd]

    def _rename_tree(self, old: str, new: str) -> None:
        for wd, directory in self._dirs.items():
            if directory == old or directory.startswith(old + "/"):
                self._dirs[wd] = new + directory[len(old) :]

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

    def _parse(self, data: bytes) -> None:
        """Turn one read of events into changes (pairing moves by cookie) and queue them."""
        moved_from: tuple[int, str, bool, int] | None = None  # (cookie, path, is_dir, offset)
        offset = 0
        while offset + _EVENT.size <= len(data):
            start = offset
            wd, mask, cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            name = os.fsdecode(data[start + _EVENT.size : offset].rstrip(b"\0"))
            is_dir = bool(mask & IN_ISDIR)
            if moved_from is not None:
                from_cookie, from_path, from_is_dir, _ = moved_from
                moved_from = None
                if mask & IN_MOVED_TO and cookie == from_cookie and wd in self._dirs:
                    self._add_move(from_path, os.path.join(self._dirs[wd], name), is_dir)
                    continue
                self._moved_out(from_path, from_is_dir)  # may stop watching the event's directory
            directory = self._dirs.get(wd)
            if directory is None and not mask & IN_Q_OVERFLOW:
                continue  # a directory no longer watched
            path = os.path.join(directory, name) if directory and name else directory or self.path
            if mask & IN_Q_OVERFLOW:
                self._changes.append(Change(self.path, "overflow"))
            elif mask & IN_IGNORED:
                del self._dirs[wd]
                if wd == self._root:
                    self._ended = True
            elif mask & IN_MOVED_FROM:
                moved_from = (cookie, path, is_dir, start)
            elif mask & (IN_CREATE | IN_MOVED_TO):
                self._add(path, "created", is_dir)
                if is_dir and self._recursive:
                    self._watch_new_directory(path)
            elif mask & (IN_MODIFY | IN_ATTRIB):
                self._add(path, "modified", is_dir)
            elif mask & IN_DELETE:
                self._add(path, "deleted", is_dir)
            elif mask & IN_DELETE_SELF and wd == self._root:
                self._add(path, "deleted", True)  # only a watched directory reports itself
        if moved_from is None:
            return
        # The kernel queues both halves of a rename at once: a move-from that ends a read
        # has its pair waiting in the kernel now, or it left the watch.
        try:
            more = os.read(self._handle.fd, _READ_SIZE)
        except BlockingIOError:
            self._moved_out(moved_from[1], moved_from[2])
        else:
            self._unclaimed = data[moved_from[3] :] + more  # parsed again, with its pair

    def _inside(self, path: str) -> bool:
        return self._file is None or path == self._file

    def _add(self, path: str, kind: ChangeKind, is_dir: bool) -> None:
        if not self._inside(path) or kind not in self._kinds:
            return
        change = Change(path, kind, is_dir=is_dir)
        if kind == "modified" and self._changes and self._changes[-1] == change:
            return  # a burst of writes to one file is one change
        self._changes.append(change)

    def _add_move(self, old: str, new: str, is_dir: bool) -> None:
        if is_dir and self._recursive:
            self._rename_tree(old, new)
        if self._inside(old) and self._inside(new) and "moved" in self._kinds:
            self._changes.append(Change(new, "moved", old, is_dir))
            return
        self._add(old, "deleted", is_dir)
        self._add(new, "created", is_dir)

    def _moved_out(self, path: str, is_dir: bool) -> None:
        if is_dir and self._recursive:
            self._forget_tree(path)
        self._add(path, "deleted", is_dir)

    async def aclose(self) -> None:
        """Remove the watch and close the inotify fd (idempotent)."""
        handle = self._handle
        if not handle.closed:
            for wd in self._dirs:
                _libc.inotify_rm_watch(handle.fd, wd)  # EINVAL once the kernel dropped it: fine
            self._dirs.clear()
            handle.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


def watch(path: str | os.PathLike[str], *, kinds: Collection[str] = KINDS, recursive: bool = False) -> Watch:
    """Watch a directory, or one file, for changes, through inotify on the running loop.

    A directory is watched for changes to the names in it; with
    ``recursive=True``, in every directory under it too, including those
    created or moved in later (without, a subdirectory's creation is seen,
    not what happens inside it). A file is watched through its directory
    and filtered by name, so that it is followed across an editor's
    rename-and-replace save; it need not exist yet.

    Args:
        path: the directory or file.
        kinds: the change kinds wanted (default: all four); the kernel is
            asked only for the events these need. With ``"moved"`` left
            out, a rename is reported as ``"deleted"`` of the old name and
            ``"created"`` of the new one, as far as those are wanted.
        recursive: watch the whole tree under a directory.

    Raises:
        FileNotFoundError: the directory (or the file's directory) does not exist.
        NotADirectoryError: ``recursive=True`` on something other than a directory.
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
        A recursive watch adds one kernel watch per directory (bounded by
        ``fs.inotify.max_user_watches``); what a new subdirectory holds
        before its watch is added is reported as ``"created"`` by a scan,
        so a file made at that moment may be reported twice.

    Example::

        async with aioipc.files.watch("/etc/app/conf.json") as changes:
            async for change in changes:
                if change.kind in ("created", "modified", "moved"):
                    reload(change.path)
    """
    return Watch(path, kinds, recursive=recursive)


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
