"""Readiness: the one owner of ``add_reader`` / ``add_writer`` in aioipc.

Rule 1: try the syscall first; park on the loop only when it would block.
No thread for anything with a pollable fd.
Rule 2: one :class:`FdHandle` owns each fd and sets it to -1 on close;
closing wakes any task parked on it with ``ClosedResourceError``.
Rule 3: a read or write registration outlives the wait that made it while
a task keeps reading or writing (no ``epoll_ctl`` per wait); it is dropped
the first time the fd turns ready while nobody waits, so an fd nobody uses
costs no CPU. A watcher (a callback run on every readiness, for readers and
writers that are no task's wait) keeps its registration until it stops.

Every mechanism with a pollable fd (pipes, FIFOs, sockets, POSIX queue
descriptors, ring doorbells, inotify) parks through an :class:`FdHandle`;
nothing else in aioipc calls ``add_reader`` or ``add_writer``.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import stat
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

__all__ = ["FdHandle", "check_fd_kind", "close_fds", "fds_from_ancillary"]

T = TypeVar("T")


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def check_fd_kind(fd: int) -> None:
    """Refuse an fd the event loop cannot poll (regular files, directories, block devices).

    Raises:
        ValueError: the fd is not a pipe, FIFO, socket or character device.
    """
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError(
            f"fd {fd} is not a pipe, FIFO, socket or character device "
            "(regular files cannot be polled by an event loop)"
        )


class FdHandle:
    """Owns one non-blocking file descriptor; ``fd`` is -1 once closed."""

    __slots__ = (
        "__weakref__",
        "_loop",
        "_read_args",
        "_read_op",
        "_read_waiter",
        "_reader_armed",
        "_watch_writer",
        "_write_waiter",
        "_writer_armed",
        "fd",
    )

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_waiter: asyncio.Future[Any] | None = None
        self._read_op: Callable[..., Any] | None = None
        self._read_args: tuple[Any, ...] = ()
        self._reader_armed = False  # registered with the loop for read()
        self._write_waiter: asyncio.Future[None] | None = None
        self._writer_armed = False  # registered with the loop for writability
        self._watch_writer: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<FdHandle fd={self.fd}{' closed' if self.fd < 0 else ''}>"

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def fileno(self) -> int:
        return self.fd

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this fd is registered with (the running one, bound at first use)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def wait_readable(self) -> None:
        """Park until the fd is readable; ``ClosedResourceError`` if it is closed meanwhile."""
        fd = self.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        loop = self.loop()
        self._disarm_reader()
        waiter = self._read_waiter = loop.create_future()
        loop.add_reader(fd, _wake, waiter)
        try:
            await waiter
        finally:
            self._read_waiter = None
            if self.fd >= 0:
                loop.remove_reader(fd)

    async def read(self, op: Callable[..., T], keep: Callable[[T], None], *args: Any, now: bool = True) -> T:
        """Return ``op(fd, *args)``, a read that raises ``BlockingIOError`` until the fd has data.

        Tries ``op`` at once unless the loop already polls the fd for this
        handle, else waits for the loop to report the fd readable and runs
        ``op`` in that callback (again on ``BlockingIOError``). The
        registration with the loop outlives the wait, so a task that keeps
        receiving pays no ``epoll_ctl`` per wait and finds its data already
        read when it wakes; it is dropped the first time the fd turns
        readable while nobody waits, so an fd nobody reads costs no CPU.

        Args:
            op: the read, e.g. ``os.readv`` with ``args=([buffer],)``, or
                ``lambda fd: sock.recvmsg(...)``; it runs in a loop callback,
                only while a task waits here.
            keep: called with ``op``'s result when the task was cancelled
                after ``op`` had already consumed data, so that the caller
                can hand it to its next read: nothing is lost.
            args: more arguments for ``op``, after the fd.
            now: ``False`` when the caller has just found the fd empty: no
                second try (a syscall, and an exception whose traceback would
                keep this coroutine's frame object for as long as it waits).

        Raises:
            anyio.ClosedResourceError: the handle was closed meanwhile.
            OSError: what ``op`` raised.
        """
        fd = self.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        if now and not self._reader_armed:
            try:
                return op(fd, *args)
            except BlockingIOError:
                pass
        # Armed: the fd was empty when last read and the loop will say when
        # it is not, so a read now would most likely be wasted.
        waiter = self.park_read(op, *args)
        try:
            return await waiter  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            self.keep_read(waiter, keep)
            raise
        finally:
            self.end_read()

    def park_read(self, op: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """:meth:`read`'s wait, for a caller that awaits the future itself (one coroutine fewer while parked).

        The future gets ``op(fd, *args)`` (or its ``OSError``) from the loop
        callback once the fd is readable. Await it in ``try``, call
        :meth:`keep_read` when that raises ``CancelledError`` and
        :meth:`end_read` in ``finally``, as :meth:`read` does.

        Raises:
            anyio.ClosedResourceError: the handle is closed.
        """
        fd = self.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        loop = self._loop or self.loop()
        waiter = self._read_waiter = loop.create_future()
        self._read_op = op
        self._read_args = args
        if not self._reader_armed:
            loop.add_reader(fd, self._on_readable)
            self._reader_armed = True
        return waiter

    @staticmethod
    def keep_read(waiter: asyncio.Future[Any], keep: Callable[[Any], None]) -> None:
        """A parked read was cancelled: hand ``keep`` what ``op`` had already read, if it had."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            keep(waiter.result())

    def end_read(self) -> None:
        """A parked read is over (``finally`` of the ``await``)."""
        self._read_waiter = self._read_op = None
        self._read_args = ()

    def _on_readable(self) -> None:
        waiter, op = self._read_waiter, self._read_op
        if waiter is None or op is None or waiter.done():
            self._disarm_reader()
            return
        try:
            result = op(self.fd, *self._read_args)
        except BlockingIOError:
            return
        except OSError as exc:
            waiter.set_exception(exc)
            return
        waiter.set_result(result)

    def _disarm_reader(self) -> None:
        if self._reader_armed:
            self._reader_armed = False
            if self.fd >= 0 and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self.fd)

    async def wait_writable(self) -> None:
        """Park until the fd is writable; ``ClosedResourceError`` if it is closed meanwhile.

        As for reads, the registration with the loop outlives the wait (a
        writer that keeps filling the fd pays no ``epoll_ctl`` per wait); it
        is dropped the first time the fd turns writable while nobody waits.
        """
        fd = self.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        loop = self._loop or self.loop()
        waiter = self._write_waiter = loop.create_future()
        if not self._writer_armed:
            loop.add_writer(fd, self._on_writable)
            self._writer_armed = True
        try:
            await waiter
        finally:
            self._write_waiter = None

    def watch_readable(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` from the loop each time the fd is readable; ``None`` stops it.

        For a reader that is no task's wait, such as a doorbell that wakes
        several tasks: the callback reads the fd itself. A watched fd is not
        also read with :meth:`read` or :meth:`wait_readable`.
        """
        if self.fd < 0:
            return
        if callback is None:
            self._disarm_reader()
            return
        loop = self._loop or self.loop()
        self._disarm_reader()
        loop.add_reader(self.fd, callback)
        self._reader_armed = True

    def watch_writable(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` from the loop each time the fd is writable; ``None`` stops it.

        For a writer that is no task's wait: the pending buffer a send stream
        writes in the background. A task may still :meth:`wait_writable`
        meanwhile; both are told.
        """
        self._watch_writer = callback
        fd = self.fd
        if callback is not None and fd >= 0 and not self._writer_armed:
            (self._loop or self.loop()).add_writer(fd, self._on_writable)
            self._writer_armed = True

    def _on_writable(self) -> None:
        watcher = self._watch_writer
        if watcher is not None:
            watcher()
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif self._watch_writer is None and waiter is None:
            self._disarm_writer()

    def _disarm_writer(self) -> None:
        if self._writer_armed:
            self._writer_armed = False
            if self.fd >= 0 and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_writer(self.fd)

    def detach(self) -> int:
        """Give up ownership: return the fd (still open) and mark this handle closed.

        Raises:
            anyio.ClosedResourceError: already closed or detached.
        """
        fd = self.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        if self._read_waiter is not None or self._write_waiter is not None:
            raise anyio.BusyResourceError("detaching an fd a task is waiting on")
        self._disarm_reader()
        self._disarm_writer()
        self._watch_writer = None
        self.fd = -1
        return fd

    def close(self) -> None:
        """Close the fd (idempotent), first waking parked tasks with ``ClosedResourceError``."""
        fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        self._reader_armed = self._writer_armed = False
        self._watch_writer = None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        for waiter in (self._read_waiter, self._write_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(anyio.ClosedResourceError())
        os.close(fd)

    def __del__(self) -> None:
        if self.fd >= 0:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors in ``SCM_RIGHTS`` messages (never raises: they must not leak)."""
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def close_fds(fds: list[int]) -> None:
    """Close received fds nobody will take, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
