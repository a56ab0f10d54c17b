"""Byte streams over non-blocking file descriptors, on the running loop.

Rule 1: try the syscall first; park on the loop (``add_reader`` /
``add_writer``) only when it would block. No thread for anything with a
pollable fd.
Rule 2: one :class:`FdHandle` owns each fd and sets it to -1 on close;
closing wakes any task parked on it with ``ClosedResourceError``.
Rule 3: small sends are appended to a pending buffer that is written once
per loop iteration (a burst of small sends costs one syscall); large sends
go straight to ``writev``. A send is never half-written: if it is cancelled
after its first byte went out, the rest is still written in the background.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from .attributes import IPCAttribute
from .errors import broken, map_exceptions
from .fdio import FdHandle, check_fd_kind
from .streams import Buffer, ByteReceiveStream, ByteSendStream, ByteStream, ResourceGuard

__all__ = ["FdByteStream", "FdHandle", "FdReceiveStream", "FdSendStream", "check_fd_kind"]

HIGH_WATER = 64 * 1024  # pending bytes above which send() waits for the peer
DIRECT_WRITE = 16 * 1024  # sends this large skip the pending buffer
PIPE_BUF = select.PIPE_BUF

T = TypeVar("T")


def _skip(parts: Sequence[Buffer], offset: int) -> list[memoryview]:
    """Byte views of ``parts`` without their first ``offset`` bytes."""
    views = []
    for part in parts:
        view = memoryview(part).cast("B")
        if offset >= len(view):
            offset -= len(view)
            continue
        views.append(view[offset:])
        offset = 0
    return views


def _fd_extra(handle: FdHandle, extra: Mapping[Any, Any] | None) -> dict[Any, Callable[[], Any]]:
    attrs: dict[Any, Callable[[], Any]] = {IPCAttribute.fd: handle.fileno}
    for key, value in (extra or {}).items():
        attrs[key] = (lambda v: lambda: v)(value)
    return attrs


class FdReceiveStream(ByteReceiveStream):
    """Receive bytes from a non-blocking fd (pipe, FIFO, socket).

    Raises:
        anyio.EndOfStream: every writer closed its end.
        anyio.ClosedResourceError: this stream was closed (also wakes a task parked in ``receive``).
        anyio.BusyResourceError: another task is already receiving.
    """

    def __init__(
        self, handle: FdHandle, *, extra: Mapping[Any, Any] | None = None, wait_first: bool = False
    ) -> None:
        self._handle = handle
        self._guard = ResourceGuard("receiving")
        self._extra = _fd_extra(handle, extra)
        # A FIFO reader opened before any writer reads EOF at once; waiting for
        # readiness first makes it wait for the first writer instead.
        self._wait_first = wait_first
        self._unclaimed = b""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._handle.fd}>"

    def fileno(self) -> int:
        return self._handle.fd

    def detach(self, *, blocking: bool = True) -> int:
        """Return the fd and stop owning it, e.g. to hand it to a program that expects a blocking fd.

        Caveats:
            ``blocking`` changes the open file description, which other copies
            of the fd share.
        """
        fd = self._handle.detach()
        os.set_blocking(fd, blocking)
        return fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        with self._guard:
            if self._unclaimed:
                data, self._unclaimed = self._unclaimed[:max_bytes], self._unclaimed[max_bytes:]
                return data
            return await self._read(os.read, self._keep_unclaimed, max_bytes)

    async def receive_into(self, buffer: memoryview) -> int:
        handle = self._handle
        if not (
            handle._reader_armed or self._unclaimed or self._wait_first or self._guard.busy or handle.fd < 0
        ):
            # The common case of a reader that keeps up with no wait: read now.
            try:
                n = os.readv(handle.fd, (buffer,))
            except BlockingIOError:
                pass
            except OSError:
                with map_exceptions():
                    raise
            else:
                if n:
                    return n
                raise anyio.EndOfStream
        guard = self._guard  # entered by hand: this is the hot path of every framed receive
        if guard.busy:
            raise anyio.BusyResourceError("receiving")
        guard.busy = True
        try:
            if self._unclaimed:
                n = min(len(buffer), len(self._unclaimed))
                buffer[:n] = self._unclaimed[:n]
                self._unclaimed = self._unclaimed[n:]
                return n
            return await self._read(os.readv, lambda n: self._keep_unclaimed(bytes(buffer[:n])), (buffer,))
        finally:
            guard.busy = False

    async def _read(self, op: Callable[..., T], keep: Callable[[T], None], *args: Any) -> T:
        """``handle.read(op, keep, *args)`` with a FIFO's first wait, errors mapped, and
        ``EndOfStream`` for an empty result (0 bytes read)."""
        handle = self._handle
        if self._wait_first:
            await handle.wait_readable()
            self._wait_first = False
        try:
            result = await handle.read(op, keep, *args)
        except OSError:
            with map_exceptions():
                raise
        if result:
            return result
        raise anyio.EndOfStream

    def _keep_unclaimed(self, data: bytes) -> None:
        # A receive cancelled after its data was read: the next receive returns it first.
        self._unclaimed += data

    async def aclose(self) -> None:
        self._handle.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._extra


class FdSendStream(ByteSendStream):
    """Send bytes to a non-blocking fd, coalescing small sends.

    ``send()`` returns once the data is either written or queued in a
    pending buffer that the loop writes on its next iteration; it waits
    (backpressure) while more than 64 KiB are pending. ``aclose()`` writes
    what is pending first; cancel it (or wrap it in a timeout) to close at
    once and drop the rest.

    Args:
        atomic: keep each ``send()`` of at most ``PIPE_BUF`` bytes in one
            ``write()``, so that concurrent writers of a FIFO never
            interleave inside it.

    Raises:
        anyio.BrokenResourceError: the reading end is gone (``EPIPE``: no
            SIGPIPE death), now or for data queued earlier.
        anyio.ClosedResourceError: this stream was closed.
        anyio.BusyResourceError: another task is already sending.
    """

    def __init__(
        self, handle: FdHandle, *, extra: Mapping[Any, Any] | None = None, atomic: bool = False
    ) -> None:
        self._handle = handle
        self._guard = ResourceGuard("sending")
        self._extra = _fd_extra(handle, extra)
        self._pending = bytearray()
        self._units: deque[int] | None = deque() if atomic else None
        self._flush_handle: asyncio.Handle | None = None
        self._writer_registered = False
        self._drain_waiters: list[tuple[asyncio.Future[None], int]] = []
        self._error: OSError | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._handle.fd} pending={len(self._pending)}>"

    def fileno(self) -> int:
        return self._handle.fd

    def detach(self, *, blocking: bool = True) -> int:
        """Return the fd and stop owning it (see :meth:`FdReceiveStream.detach`).

        Raises:
            anyio.BusyResourceError: data is still pending; ``await flush()`` first.
        """
        if self._pending:
            raise anyio.BusyResourceError("detaching with unsent data; await flush() first")
        fd = self._handle.detach()
        self._closed = True
        os.set_blocking(fd, blocking)
        return fd

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._extra

    def _check(self) -> None:
        if self._closed or self._handle.closed:
            raise anyio.ClosedResourceError
        if self._error is not None:
            raise broken(self._error) from self._error

    async def send(self, item: Buffer) -> None:
        await self.send_parts((item,))

    def try_send_parts(self, parts: Sequence[Buffer]) -> bool:
        size = sum(map(len, parts))
        pending = self._pending
        if (
            size >= DIRECT_WRITE
            or len(pending) >= HIGH_WATER
            or self._error is not None
            or self._closed
            or self._guard.busy
            or self._handle.fd < 0
        ):
            return False
        if self._flush_handle is not None or self._writer_registered:
            # A burst: a flush is already due, queue behind it.
            for part in parts:
                pending += part
            if self._units is not None:
                self._units.append(size)
            return True
        # Idle: write at once, so that a lone message waits for no loop
        # iteration; the sends that follow in this iteration queue behind
        # the flush scheduled here and go out together.
        handle = self._handle
        try:
            written = os.writev(handle.fd, parts)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._error = exc
            raise broken(exc) from exc
        if written < size:
            for view in _skip(parts, written):
                pending += view
            if self._units is not None:
                self._units.append(size - written)
            self._flush_handle = (handle._loop or handle.loop()).call_soon(self._flush)
        else:
            self._flush_handle = (handle._loop or handle.loop()).call_soon(self._end_burst)
        return True

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        if self.try_send_parts(parts):
            return
        with self._guard:
            self._check()
            size = sum(map(len, parts))
            if self._pending:
                await self._drain(0 if size >= DIRECT_WRITE else HIGH_WATER - 1)
                self._check()
            if size >= DIRECT_WRITE:
                await self._write_direct(parts, size)
                return
            for part in parts:
                self._pending += part
            if self._units is not None:
                self._units.append(size)
            if self._flush_handle is None and not self._writer_registered:
                self._flush_handle = self._handle.loop().call_soon(self._flush)

    async def flush(self) -> None:
        """Wait until everything sent so far has been written to the fd."""
        self._check()
        await self._drain(0)
        self._check()

    async def _write_direct(self, parts: Sequence[Buffer], size: int) -> None:
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        written = 0
        handle = self._handle
        try:
            with handle.keep_writer_registered():
                while views:
                    try:
                        with map_exceptions():
                            n = os.writev(handle.fd, views)
                    except BlockingIOError:
                        await handle.wait_writable()
                        continue
                    written += n
                    while views and n >= len(views[0]):
                        n -= len(views.pop(0))
                    if n:
                        views[0] = views[0][n:]
        except BaseException:
            if views and written and not handle.closed:
                # Never leave half a unit on the wire: queue the rest.
                for view in views:
                    self._pending += view
                if self._units is not None:
                    self._units.append(size - written)
                self._flush()
            raise

    def _write_some(self, fd: int) -> int:
        pending = self._pending
        units = self._units
        if units is None:
            return os.write(fd, pending)
        group = 0
        for unit in units:
            if group and group + unit > PIPE_BUF:
                break
            group += unit
        n = os.write(fd, memoryview(pending)[:group])
        left = n
        while left and units[0] <= left:
            left -= units.popleft()
        if left:
            units[0] -= left
        return n

    def _end_burst(self) -> None:
        # The loop iteration of an idle write is over: write what queued behind it.
        self._flush_handle = None
        if self._pending:
            self._flush()

    def _flush(self) -> None:
        self._flush_handle = None
        fd = self._handle.fd
        pending = self._pending
        if fd >= 0:
            try:
                while pending:
                    n = self._write_some(fd)
                    del pending[:n]
                    if n == 0:
                        break
            except BlockingIOError:
                pass
            except OSError as exc:
                self._error = exc
                pending.clear()
                if self._units is not None:
                    self._units.clear()
        loop = self._handle.loop()
        if pending and fd >= 0 and self._error is None:
            if not self._writer_registered:
                loop.add_writer(fd, self._flush)
                self._writer_registered = True
        elif self._writer_registered:
            self._writer_registered = False
            if fd >= 0:
                loop.remove_writer(fd)
        self._wake_drainers()

    def _wake_drainers(self) -> None:
        size = len(self._pending)
        waiters = self._drain_waiters
        for waiter, limit in waiters[:]:
            if waiter.done():
                waiters.remove((waiter, limit))
            elif self._error is not None or self._handle.closed or size <= limit:
                waiter.set_result(None)
                waiters.remove((waiter, limit))

    async def _drain(self, limit: int) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        while len(self._pending) > limit and self._error is None and not self._handle.closed:
            waiter = self._handle.loop().create_future()
            self._drain_waiters.append((waiter, limit))
            await waiter

    async def close_sending(self, shutdown: Callable[[int], None] | None = None) -> None:
        """Write what is pending, then close the fd, or call ``shutdown(fd)`` and keep it open.

        Cancelling this closes at once and drops what was still pending.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending and self._error is None and not self._handle.closed:
                await self._drain(0)
        finally:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            if self._writer_registered:
                self._writer_registered = False
                if not self._handle.closed:
                    self._handle.loop().remove_writer(self._handle.fd)
            self._pending.clear()
            if shutdown is not None and not self._handle.closed:
                try:
                    shutdown(self._handle.fd)
                except OSError:
                    pass
            else:
                self._handle.close()
            self._wake_drainers()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.close_sending()


class FdByteStream(ByteStream):
    """A two-way byte stream from a receiving and a sending half.

    The halves may share one fd (a socket: pass ``shutdown`` so that
    ``send_eof()`` shuts the socket down for writing) or own one each (a
    pair of pipes: ``send_eof()`` closes the writing pipe).
    """

    def __init__(
        self,
        receiver: FdReceiveStream,
        sender: FdSendStream,
        *,
        shutdown: Callable[[int], None] | None = None,
        extra: Mapping[Any, Any] | None = None,
    ) -> None:
        self.receiver = receiver
        self.sender = sender
        self._shutdown = shutdown
        self._extra = {**receiver.extra_attributes, **_fd_extra(receiver._handle, extra)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} receiver={self.receiver!r} sender={self.sender!r}>"

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.receiver.receive(max_bytes)

    async def receive_into(self, buffer: memoryview) -> int:
        return await self.receiver.receive_into(buffer)

    async def send(self, item: Buffer) -> None:
        await self.sender.send_parts((item,))

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        await self.sender.send_parts(parts)

    def try_send_parts(self, parts: Sequence[Buffer]) -> bool:
        return self.sender.try_send_parts(parts)

    async def send_eof(self) -> None:
        await self.sender.close_sending(self._shutdown)

    async def aclose(self) -> None:
        try:
            await self.sender.aclose()
        finally:
            await self.receiver.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._extra
