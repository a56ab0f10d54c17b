"""``spool:DIR``: a durable message queue in a directory (the maildir pattern); no server needed.

Layout::

    DIR/tmp/               messages being written (and consumers being set up)
    DIR/new/               messages waiting, one file each, oldest name first
    DIR/cur/consumer.PID.X/  one directory per live consumer: the messages it claimed
    DIR/bad/               files that could not be delivered (not a regular file, over max_size)

Rule 1: a message is a file written in ``tmp/`` and renamed into ``new/``; a
reader never sees a partial message, and a shell can enqueue one with
``printf job > DIR/tmp/x && mv DIR/tmp/x DIR/new/``.
Rule 2: a consumer claims a message by renaming it from ``new/`` into its
own directory under ``cur/``. A rename succeeds for one consumer only, so
consumers sharing a spool never deliver a message twice.
Rule 3: a claimed message is deleted only when the handler asks for the
next one, or returns; if the handler raises, is cancelled, or its process
dies, the message goes back to ``new/`` (at-least-once).
Rule 4: a consumer holds an exclusive ``flock`` on its directory under
``cur/`` for as long as it lives; the kernel drops the lock when the
process dies, however it dies. A directory in ``cur/`` whose lock can be
taken belongs to a dead consumer: ``serve()`` moves its messages back to
``new/`` and removes it. A consumer directory is locked in ``tmp/`` before
it is renamed into ``cur/``, so a live one is never seen unlocked there.
Rule 5: new messages are noticed through an inotify watch on ``new/``
(:func:`aioipc.files.watch`); an idle consumer costs no CPU and no thread.
"""

from __future__ import annotations

import fcntl
import heapq
import logging
import os
import secrets
import stat
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._core.errors import FrameTooLarge
from ._core.framing import DEFAULT_MAX_SIZE
from ._core.schemes import Address
from ._core.server import Server
from ._core.streams import Buffer, MessageStream, ResourceGuard
from .files import Watch, watch

__all__ = ["SpoolInfo", "SpoolReader", "SpoolWriter", "create", "info"]

logger = logging.getLogger("aioipc")

SUBDIRS = ("tmp", "new", "cur", "bad")
_BATCH = 1024  # names taken from one scan of new/: memory stays bounded however deep the spool is
_STALE_TMP = 36 * 3600  # maildir's rule: a file in tmp/ this old is a dead writer's
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SpoolInfo(NamedTuple):
    """What :func:`info` reports: messages ``waiting`` in ``new/``, ``claimed`` by ``consumers``."""

    waiting: int
    claimed: int
    consumers: int


def _unique() -> str:
    """A name that sorts by time of writing: ``NANOSECONDS.PID.RANDOM``."""
    return f"{time.time_ns():020d}.{os.getpid()}.{secrets.token_hex(4)}"


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
    else:
        os.chmod(path, 0o700)  # exactly, whatever the umask


async def create(path: str | os.PathLike[str]) -> None:
    """Create the spool directory and ``tmp/``, ``new/``, ``cur/``, ``bad/`` in it (0700), if missing.

    ``serve("spool:DIR")`` does this itself; call it to let writers in before
    the first consumer starts.

    Raises:
        NotADirectoryError: a name in the way is not a directory.
        PermissionError: as the file system reports it.

    Example::

        await aioipc.spool.create("/var/spool/app")
    """
    await anyio.lowlevel.checkpoint()
    _create(os.fspath(path))  # a few mkdirs: metadata, on the loop like every other spool call but fsync


def _create(base: str) -> None:
    _mkdir(base)
    for sub in SUBDIRS:
        _mkdir(os.path.join(base, sub))


def info(path: str | os.PathLike[str]) -> SpoolInfo:
    """How many messages wait in the spool at ``path``, how many are claimed, by how many consumers.

    Raises:
        FileNotFoundError: no spool there.

    Caveats:
        Counts files, so it reads whole directories: cheap for thousands
        of messages, not for millions.

    Example::

        waiting, claimed, consumers = aioipc.spool.info("/var/spool/app")
    """
    base = os.fspath(path)
    waiting = len(os.listdir(os.path.join(base, "new")))
    claimed = consumers = 0
    for entry in os.scandir(os.path.join(base, "cur")):
        if entry.is_dir(follow_symlinks=False):
            consumers += 1
            claimed += len(os.listdir(entry.path))
    return SpoolInfo(waiting, claimed, consumers)


class SpoolWriter(MessageStream):
    """The sending side of a spool (what ``aioipc.connect("spool:DIR")`` returns); send only.

    Each ``send()`` writes one file in ``tmp/`` (0600, ``O_EXCL``), fsyncs it,
    renames it into ``new/`` and fsyncs ``new/``: a message that was sent
    survives a crash of the machine. With ``sync=False`` the fsyncs are
    skipped (and no thread is used): it survives a crash of the process only.

    Raises:
        FileNotFoundError: no spool at ``path`` (made by ``serve()`` or :func:`create`).
        FrameTooLarge: a message over ``max_size``; nothing was written.
        TypeError: ``receive()``: a spool is received by ``aioipc.serve("spool:DIR", handler)``.

    Caveats:
        There is no backpressure: a spool grows until its file system is
        full (``OSError(ENOSPC)``). ``send_eof()`` closes the stream: a
        spool has no end of stream, its consumers wait for more.

    Example::

        async with await aioipc.connect("spool:/var/spool/app") as jobs:
            await jobs.send(b"resize cat.jpg")
    """

    def __init__(self, path: str, *, max_size: int = DEFAULT_MAX_SIZE, sync: bool = True) -> None:
        self.path = path
        self.max_size = max_size
        self._tmp, self._new = os.path.join(path, "tmp"), os.path.join(path, "new")
        for sub in (self._tmp, self._new):
            if not os.path.isdir(sub):
                raise FileNotFoundError(
                    f"no spool at {path} (no {os.path.basename(sub)}/ in it): "
                    f"aioipc.serve('spool:{path}', handler) or aioipc.spool.create() makes one"
                )
        self._sync = sync
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} spool:{self.path}{' closed' if self._closed else ''}>"

    async def send(self, item: Buffer) -> None:
        """Enqueue one message; it is in ``new/`` when this returns.

        A cancelled send either removed its temporary file (nothing sent) or
        had renamed it already, in which case it returns normally.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        data = memoryview(item).cast("B")
        if len(data) > self.max_size:
            raise FrameTooLarge(len(data), self.max_size)
        name = _unique()
        temp = os.path.join(self._tmp, name)
        try:
            if self._sync:
                await anyio.to_thread.run_sync(self._write, temp, data)
            else:
                await anyio.lowlevel.checkpoint()
                self._write(temp, data)
            os.rename(temp, os.path.join(self._new, name))
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        if self._sync:
            with anyio.CancelScope(shield=True):  # the message is sent: make the rename durable
                await anyio.to_thread.run_sync(_fsync_dir, self._new)

    def _write(self, temp: str, data: memoryview) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while data:
                data = data[os.write(fd, data) :]
            if self._sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    async def receive(self) -> bytes:
        raise TypeError(
            f"spool:{self.path} was opened to send; receive with aioipc.serve('spool:{self.path}', handler)"
        )

    async def send_eof(self) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(name: str, dir_fd: int) -> int | None:
    """Open the directory ``name`` and take its exclusive flock; ``None`` if it is gone or locked."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:  # gone, not a directory, a symlink
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class SpoolReader(MessageStream):
    """The receiving side of a spool, one consumer: what a ``spool:`` handler gets; receive only.

    ``receive()`` deletes the message handed out before (the handler is
    done with it), claims the oldest waiting message and returns its bytes.
    Closing puts a message still in hand back into ``new/`` and removes the
    consumer's directory. Made by ``aioipc.serve("spool:DIR", handler)``.

    Raises:
        anyio.BrokenResourceError: the spool's ``new/`` directory was removed.
        TypeError: ``send()``: send with ``aioipc.connect("spool:DIR")``.

    Caveats:
        At-least-once: a message whose handler raised, was cancelled or
        died is delivered again, so a handler should be idempotent (a
        message that always makes it raise comes back on every start).
        Order is by file name, oldest first for names that ``send()``
        gives (a nanosecond timestamp leads them); a shell writer that
        wants its place in line names its files ``$(date +%s%N)``.
        A file written straight into ``new/`` may be read half-written:
        write in ``tmp/`` and rename.

    Example::

        async def handler(jobs):
            async for job in jobs:   # the previous job is deleted when the next one is asked for
                await run(job)

        async with await aioipc.serve("spool:/var/spool/app", handler) as server:
            await server.serve_forever()
    """

    def __init__(self, path: str, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.path = path
        self.max_size = max_size
        self._guard = ResourceGuard("receiving")
        self._pending: deque[str] = deque()
        self._in_hand: str | None = None
        self._fds: list[int] = []
        try:
            self._new = self._open("new")
            self._cur = self._open("cur")
            self._tmp = self._open("tmp")
            self._bad = self._open("bad")
            _recover(self._cur, self._new, self._tmp)
            self.consumer, self._mine = self._enter()
            self._watch: Watch = watch(os.path.join(path, "new"), kinds={"created"})
        except BaseException:
            self._close_fds()
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} spool:{self.path} consumer={self.consumer}>"

    def _open(self, sub: str) -> int:
        fd = os.open(os.path.join(self.path, sub), _DIR_FLAGS)
        self._fds.append(fd)
        return fd

    def _enter(self) -> tuple[str, int]:
        """Make this consumer's directory: locked in ``tmp/``, then renamed into ``cur/`` (Rule 4)."""
        while True:
            name = f"consumer.{os.getpid()}.{secrets.token_hex(4)}"
            os.mkdir(name, 0o700, dir_fd=self._tmp)
            fd = _lock(name, self._tmp)
            if fd is None:
                continue  # removed or locked by a recovering consumer meanwhile: another name
            try:
                os.rename(name, name, src_dir_fd=self._tmp, dst_dir_fd=self._cur)
            except FileNotFoundError:
                os.close(fd)
                continue
            self._fds.append(fd)
            return name, fd

    async def receive(self) -> bytes:
        """The oldest waiting message; waits (on inotify, no polling) while ``new/`` is empty.

        Raises:
            anyio.ClosedResourceError: the stream was closed.
            anyio.BrokenResourceError: the spool's ``new/`` was removed.
        """
        with self._guard:
            if self._mine < 0:
                raise anyio.ClosedResourceError
            self._ack()
            while True:
                await anyio.lowlevel.checkpoint()  # fair to the rest of the program, even when flooded
                name = await self._next_name()
                data = self._claim(name)
                if data is not None:
                    return data

    async def _next_name(self) -> str:
        while not self._pending:
            try:
                while True:
                    self._watch.receive_nowait()  # what the scan below sees needs no wake-up
            except anyio.WouldBlock:
                pass
            except anyio.EndOfStream:
                raise anyio.BrokenResourceError(f"spool:{self.path}: new/ was removed") from None
            with os.scandir(self._new) as entries:
                self._pending.extend(heapq.nsmallest(_BATCH, (entry.name for entry in entries)))
            if not self._pending:
                try:
                    await self._watch.receive()
                except anyio.EndOfStream:
                    raise anyio.BrokenResourceError(f"spool:{self.path}: new/ was removed") from None
        return self._pending.popleft()

    def _claim(self, name: str) -> bytes | None:
        """Rename ``name`` into this consumer's directory and read it; ``None`` if another took it."""
        try:
            os.rename(name, name, src_dir_fd=self._new, dst_dir_fd=self._mine)
        except FileNotFoundError:
            return None  # claimed by another consumer
        data, problem = self._read(name)
        if problem:
            # One bad writer harms only its own message: it is kept aside for a person to look at.
            logger.error("spool:%s: message %r %s; moved to bad/", self.path, name, problem)
            os.rename(name, name, src_dir_fd=self._mine, dst_dir_fd=self._bad)
            return None
        self._in_hand = name
        return data

    def _read(self, name: str) -> tuple[bytes, str]:
        """The message's bytes, or what is wrong with it."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._mine)
        except OSError as exc:
            return b"", f"cannot be opened ({exc.strerror})"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return b"", "is not a regular file"
            if st.st_size > self.max_size:
                return b"", f"has {st.st_size} bytes, over max_size={self.max_size}"
            chunks = []
            size = 0
            while chunk := os.read(fd, self.max_size + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_size:
                    return b"", f"grew over max_size={self.max_size} while read"
        finally:
            os.close(fd)
        return b"".join(chunks), ""

    def _ack(self) -> None:
        """The handler is done with the message in hand: delete it."""
        if self._in_hand is not None:
            os.unlink(self._in_hand, dir_fd=self._mine)
            self._in_hand = None

    def _handler_returned(self) -> None:
        """Called when the handler returned normally: the message in hand is done."""
        if self._mine >= 0:
            self._ack()

    async def send(self, item: Buffer) -> None:
        raise TypeError(f"a spool handler only receives; send with aioipc.connect('spool:{self.path}')")

    async def send_eof(self) -> None:
        await self.send(b"")

    async def aclose(self) -> None:
        """Put a message still in hand back into ``new/``, remove this consumer's directory (idempotent)."""
        if self._mine >= 0:
            await self._watch.aclose()
            if self._in_hand is not None:
                os.rename(self._in_hand, self._in_hand, src_dir_fd=self._mine, dst_dir_fd=self._new)
                self._in_hand = None
            os.rmdir(self.consumer, dir_fd=self._cur)
            self._close_fds()
        await anyio.lowlevel.checkpoint()

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._mine = -1

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


def _recover(cur: int, new: int, tmp: int) -> None:
    """Give dead consumers' claims back to ``new/``; drop what dead writers and consumers left in ``tmp/``."""
    for name in os.listdir(cur):
        fd = _lock(name, cur)
        if fd is None:
            continue  # a live consumer
        try:
            for message in os.listdir(fd):
                os.rename(message, message, src_dir_fd=fd, dst_dir_fd=new)
                logger.warning("spool: message %r of dead consumer %s back in new/", message, name)
            os.rmdir(name, dir_fd=cur)
        except FileNotFoundError:
            pass  # recovered by another consumer meanwhile
        finally:
            os.close(fd)
    now = time.time()
    for entry in os.scandir(tmp):
        if entry.name.startswith("consumer.") and entry.is_dir(follow_symlinks=False):
            fd = _lock(entry.name, tmp)
            if fd is not None:
                try:
                    os.rmdir(entry.name, dir_fd=tmp)
                except OSError:
                    pass
                finally:
                    os.close(fd)
        elif entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > _STALE_TMP:
            os.unlink(entry.name, dir_fd=tmp)


async def connect_address(
    address: Address, *, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None, sync: bool = True
) -> SpoolWriter:
    """``connect("spool:DIR")``: the sending side of an existing spool (retried within ``timeout``)."""
    await anyio.lowlevel.checkpoint()
    return SpoolWriter(address.path, max_size=max_size, sync=sync)


async def serve_address(
    address: Address,
    handler: Callable[[SpoolReader], Awaitable[object]],
    *,
    framing: str | None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> Server:
    """``serve("spool:DIR", handler)``: make the spool if missing, recover dead consumers' claims,
    and call ``handler`` with this consumer's receiving side at once."""
    await create(address.path)
    reader = SpoolReader(address.path, max_size=max_size)  # no thread: an idle consumer holds none

    async def run(stream: SpoolReader) -> None:
        await handler(stream)
        stream._handler_returned()

    return Server.single(str(address), run, reader)
