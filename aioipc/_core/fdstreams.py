"""Byte streams over non-blocking file descriptors, on the running loop.

Rule 1: try the syscall first; park on the fd's :class:`FdHandle` (the
one owner of the loop's readiness registrations) only when it would block.
No thread for anything with a pollable fd.
Rule 2: small sends are appended to a pending buffer that is written once
per loop iteration (a burst of small sends costs one syscall); large sends
go straight to ``writev``. The send states are in :class:`FdSendStream`.
Rule 3 (exactly what was said): a send that raises put nothing on the wire
and never will; a message joins the pending buffer only when its ``send()``
is going to return normally, with no await between. A large send waits
(cancellably) only until its first byte goes out; what the fd did not take
then joins the pending buffer, and the next send waits for it to drain.
Rule 4 (fair): each direction spends a budget (``FAIR_OPS``: one unit per
operation that did not wait, plus one per 4 KiB it moved) and yields to the
loop once when it is spent, so a peer that keeps the fd full cannot starve
the program.
Rule 5 (cheap when idle): a framed receive reads into its framer's buffer
(:meth:`FdReceiveStream.fill`), which is given back while the stream
waits, so an idle stream holds no read buffer.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from .attributes import IPCAttribute
from .errors import broken, map_exceptions
from .fdcore import DIRECT_WRITE, HIGH_WATER, skip_bytes
from .fdio import FdHandle, check_fd_kind
from .speedups import SendCore, recv_fill, try_recv_fill
from .streams import (
    FAIR_OPS,
    FAIR_SHIFT,
    Buffer,
    BufferSink,
    ByteReceiveStream,
    ByteSendStream,
    ByteStream,
    ResourceGuard,
    byte_view,
    fair_yield,
)

__all__ = ["FdByteStream", "FdHandle", "FdReceiveStream", "FdSendStream", "check_fd_kind"]

PIPE_BUF = select.PIPE_BUF

T = TypeVar("T")


def _fd_extra(handle: FdHandle, extra: Mapping[Any, Any] | None) -> dict[Any, Callable[[], Any]]:
    """The attribute getters of a stream over ``handle``, made when asked for (an idle stream keeps none)."""
    attrs: dict[Any, Callable[[], Any]] = {IPCAttribute.fd: handle.fileno}
    for key, value in (extra or {}).items():
        attrs[key] = (lambda v: lambda: v)(value)
    return attrs


class _FdOwner:
    """What every stream half that owns an :class:`FdHandle` offers: its fd, and handing it over."""

    _handle: FdHandle

    def __init__(self, handle: FdHandle, action: str, extra: Mapping[Any, Any] | None) -> None:
        self._handle = handle
        self._guard = ResourceGuard(action)
        self._extra = extra  # the caller's values; their getters are made when asked for

    def fileno(self) -> int:
        return self._handle.fd

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return _fd_extra(self._handle, self._extra)

    def detach(self, *, blocking: bool = True) -> int:
        """Return the fd and stop owning it, e.g. to hand it to a program that expects a blocking fd.

        Caveats:
            ``blocking`` changes the open file description, which other copies
            of the fd share.
        """
        fd = self._handle.detach()
        os.set_blocking(fd, blocking)
        return fd


class FdReceiveStream(_FdOwner, ByteReceiveStream):
    """Receive bytes from a non-blocking fd (pipe, FIFO, socket).

    Raises:
        anyio.EndOfStream: every writer closed its end.
        anyio.ClosedResourceError: this stream was closed (also wakes a task parked in ``receive``).
        anyio.BusyResourceError: another task is already receiving.
    """

    _sender: FdSendStream | None = None  # the sending half of the same two-way stream

    def __init__(
        self, handle: FdHandle, *, extra: Mapping[Any, Any] | None = None, wait_first: bool = False
    ) -> None:
        _FdOwner.__init__(self, handle, "receiving", extra)
        # A FIFO reader opened before any writer reads EOF at once; waiting for
        # readiness first makes it wait for the first writer instead.
        self._wait_first = wait_first
        self._unclaimed = b""
        self._budget = FAIR_OPS

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._handle.fd}>"

    async def receive(self, max_bytes: int = 65536) -> bytes:
        with self._guard:
            if self._budget <= 0:  # inline, not a coroutine: this runs once a wait
                await self._yield_fairly()
            self._budget -= 1
            if self._unclaimed:
                data, self._unclaimed = self._unclaimed[:max_bytes], self._unclaimed[max_bytes:]
                return data
            return await self._read(os.read, self._keep_unclaimed, max_bytes)

    async def receive_into(self, buffer: memoryview) -> int:
        n = self._read_now(buffer)
        if n:
            return n
        guard = self._guard  # entered by hand: this is the hot path of every framed receive
        if guard.busy:
            raise anyio.BusyResourceError("receiving")
        guard.busy = True
        try:
            if self._budget <= 0:  # inline, not a coroutine: this runs once a wait
                await self._yield_fairly()
            self._budget -= 1
            if self._unclaimed:
                n = min(len(buffer), len(self._unclaimed))
                buffer[:n] = self._unclaimed[:n]
                self._unclaimed = self._unclaimed[n:]
                return n
            return await self._read(os.readv, lambda n: self._keep_unclaimed(bytes(buffer[:n])), (buffer,))
        finally:
            guard.busy = False

    async def fill(self, sink: BufferSink) -> None:
        handle = self._handle
        # The common case of a reader that keeps up with no wait: read now, unless the loop
        # polls the fd (it was empty: take no buffer to find out) or the slow path is due.
        ready = self._budget > 0 and handle.fd >= 0 and not handle._reader_armed
        tried = ready and not (self._unclaimed or self._wait_first or self._guard.busy)
        if tried:
            try:
                n = try_recv_fill(handle.fd, None, sink, -1)
            except OSError:
                with map_exceptions():
                    raise
            if n is not None:
                if not n:
                    raise anyio.EndOfStream
                self._budget -= 1 + (n >> FAIR_SHIFT)  # type: ignore[operator]  # a read(): an int
                return
        if self._unclaimed:  # what a cancelled receive() had read: handed over like any receive_into
            sink.buffer_updated(await self.receive_into(sink.get_buffer(len(self._unclaimed))))
            return
        guard = self._guard
        if guard.busy:
            raise anyio.BusyResourceError("receiving")
        guard.busy = True
        try:
            if self._budget <= 0:  # inline, not a coroutine: this runs once a wait
                await self._yield_fairly()
                tried = False
            self._budget -= 1
            sink.release()  # no buffer while parked: one is taken when data comes
            # The op hands what it read to the sink at once: a cancelled wait loses nothing.
            if self._wait_first:  # a FIFO opened before any writer: wait for the first one
                await handle.wait_readable()
                self._wait_first = False
                tried = False
            n = None
            if not tried and not handle._reader_armed and handle.fd >= 0:
                # not found empty just now (a fair yield, a first writer): a flood's next read is
                # one syscall away, with no loop iteration and no epoll registration
                n = try_recv_fill(handle.fd, None, sink, -1)
            if n is None:
                # Parked on the handle's future itself, not in handle.read: one coroutine fewer per wait.
                waiter = handle.park_read(recv_fill, None, sink, -1)
                self._parking()
                try:
                    n = await waiter
                finally:
                    handle.end_read()
        except OSError:
            with map_exceptions():
                raise
        finally:
            guard.busy = False
        if not n:
            raise anyio.EndOfStream

    def _parking(self) -> None:
        """This task waits for the loop: the sending half's next send is no burst (see FdSendStream)."""
        sender = self._sender
        if sender is not None:
            sender._wrote = False

    def _read_now(self, buffer: memoryview) -> int:
        """:meth:`receive_into` with no wait: 0 when the read would block, or must go the slow
        way (the loop polls the fd, bytes are unclaimed, the budget is spent ...).

        Raises:
            anyio.EndOfStream: the peer closed its end.
        """
        handle = self._handle
        if self._budget <= 0 or handle._reader_armed or self._unclaimed or self._wait_first:
            return 0
        if self._guard.busy or handle.fd < 0:
            return 0
        try:
            n = os.readv(handle.fd, (buffer,))
        except BlockingIOError:
            return 0
        except OSError:
            with map_exceptions():
                raise
        if not n:
            raise anyio.EndOfStream
        self._budget -= 1 + (n >> FAIR_SHIFT)
        return n

    async def _yield_fairly(self) -> None:
        """The budget is spent: yield to the loop once, and start a new one."""
        await fair_yield()
        self._budget = FAIR_OPS

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


class FdSendStream(_FdOwner, SendCore, ByteSendStream):
    """Send bytes to a non-blocking fd, coalescing small sends.

    ``send()`` returns once the data is either written or queued in a
    pending buffer that the loop writes on its next iteration; it waits
    (backpressure) while more than 64 KiB are pending. ``aclose()`` writes
    what is pending first; cancel it (or wrap it in a timeout) to close at
    once and drop the rest.

    States (a send of ``DIRECT_WRITE`` bytes or more first waits for the
    pending buffer to empty, then for the fd to take its first bytes, and
    leaves the rest pending, a ``bytes`` object's rest held rather than
    copied (``_held``, written first): -> parked):

    - **idle**: nothing pending, no flush due. A send writes at once (one
      ``write``) and schedules nothing, so a lone message waits for no loop
      iteration and costs none: -> wrote.
    - **wrote**: the same, after a send written at once (``_wrote``). A send
      writes at once and schedules the end of the burst: -> burst. The
      receiving half of the same stream parking (the loop iterates before it
      resumes: a round trip's next send is no burst): -> idle.
    - **burst**: a write happened in this loop iteration (``_flush_handle``
      is set). Sends append to the pending buffer; at the end of the
      iteration one ``write`` takes all of it: -> idle when it all went,
      -> parked when the fd was full.
    - **parked**: bytes are pending and the fd is full (``_parked``): the
      handle watches the fd and writes more each time it turns writable.
      Sends append up to ``HIGH_WATER``, then wait (backpressure). When the
      buffer empties: -> idle. A write error (``EPIPE``) drops what is
      pending and every later send raises ``BrokenResourceError``.

    In every state a send appends only when it is about to return
    normally: a send that raised put nothing on the wire. The states and
    ``try_send_parts`` are :class:`SendCore`'s (compiled, or its Python twin).

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
        _FdOwner.__init__(self, handle, "sending", extra)
        self._pending = bytearray()
        self._held: memoryview | None = None
        self._units: deque[int] | None = deque() if atomic else None
        self._flush_handle: asyncio.Handle | None = None
        self._parked = False
        self._wrote = False
        self._drain_waiters: list[tuple[asyncio.Future[None], int]] | None = None  # made by the first wait
        self._error: OSError | None = None
        self._closed = False
        self._budget = FAIR_OPS

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._handle.fd} pending={self._unsent()}>"

    def detach(self, *, blocking: bool = True) -> int:
        """Return the fd and stop owning it (see :meth:`_FdOwner.detach`).

        Raises:
            anyio.BusyResourceError: data is still pending; ``await flush()`` first.
        """
        if self._unsent():
            raise anyio.BusyResourceError("detaching with unsent data; await flush() first")
        self._closed = True
        return super().detach(blocking=blocking)

    def _check(self) -> None:
        if self._closed or self._handle.closed:
            raise anyio.ClosedResourceError
        if self._error is not None:
            raise broken(self._error) from self._error

    async def send(self, item: Buffer) -> None:
        await self.send_parts((byte_view(item),))

    async def send_parts(self, parts: Sequence[Buffer]) -> None:
        if self.try_send_parts(parts):
            return
        with self._guard:
            self._check()
            if self._budget <= 0:
                await fair_yield()
                self._budget = FAIR_OPS
                self._check()
            parts = [byte_view(part) for part in parts]
            size = sum(map(len, parts))
            self._budget -= 1 + (size >> FAIR_SHIFT)
            if self._unsent():
                await self._drain(0 if size >= DIRECT_WRITE else HIGH_WATER - 1)
                self._check()
            if size >= DIRECT_WRITE:
                await self._write_direct(parts, size)
                return
            # No await from here on: the message joins the buffer and the send returns.
            for part in parts:
                self._pending += part
            if self._units is not None:
                self._units.append(size)
            if self._flush_handle is None and not self._parked:
                self._flush_handle = self._handle.loop().call_soon(self._flush)

    async def flush(self) -> None:
        """Wait until everything sent so far has been written to the fd."""
        self._check()
        await self._drain(0)
        self._check()

    async def _write_direct(self, parts: Sequence[Buffer], size: int) -> None:
        handle = self._handle
        while True:
            try:
                with map_exceptions():
                    written = os.writev(handle.fd, parts)
                break
            except BlockingIOError:
                # Nothing of it went out yet: a cancel here leaves nothing behind.
                await handle.wait_writable()
                self._check()
        if written < size:
            # Committed by its first byte: the rest joins the pending buffer
            # and the send returns, with no await between (exactly once).
            rest = skip_bytes(parts, written)
            if len(rest) == 1 and type(rest[0].obj) is bytes and self._units is None:
                self._held = rest[0]  # immutable: held, not copied (a large frame's payload)
            else:
                for view in rest:
                    self._pending += view
                if self._units is not None:
                    self._units.append(size - written)
            self._parked = True
            handle.watch_writable(self._flush)

    def _unsent(self) -> int:
        """Bytes sent but not written yet: the held rest of a large send, then the pending buffer."""
        held = self._held
        return len(self._pending) + (0 if held is None else len(held))

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

    def _flush(self) -> None:
        self._flush_handle = None
        handle = self._handle
        fd = handle.fd
        pending = self._pending
        if fd >= 0:
            try:
                held = self._held
                while held is not None and (n := os.write(fd, held)):
                    held = self._held = held[n:] if n < len(held) else None
                while pending and held is None:
                    n = self._write_some(fd)
                    del pending[:n]
                    if n == 0:
                        break
            except BlockingIOError:
                pass
            except OSError as exc:
                self._error = exc
                self._held = None
                pending.clear()
                if self._units is not None:
                    self._units.clear()
        parked = self._unsent() > 0 and fd >= 0 and self._error is None
        if parked != self._parked:
            self._parked = parked
            handle.watch_writable(self._flush if parked else None)
        self._wake_drainers()

    def _wake_drainers(self) -> None:
        waiters = self._drain_waiters
        if not waiters:
            return
        size = self._unsent()
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
        while self._unsent() > limit and self._error is None and not self._handle.closed:
            waiter = self._handle.loop().create_future()
            if self._drain_waiters is None:
                self._drain_waiters = []
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
            if self._unsent() and self._error is None and not self._handle.closed:
                await self._drain(0)
        finally:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            if self._parked:
                self._parked = False
                self._handle.watch_writable(None)
            self._pending.clear()
            self._held = None
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
        receiver._sender = sender
        self._shutdown = shutdown
        self._extra = extra

    def __repr__(self) -> str:
        return f"<{type(self).__name__} receiver={self.receiver!r} sender={self.sender!r}>"

    # Not ``async def``: each returns its half's coroutine (one coroutine per call, not two).
    def receive(self, max_bytes: int = 65536) -> Coroutine[Any, Any, bytes]:
        return self.receiver.receive(max_bytes)

    def receive_into(self, buffer: memoryview) -> Coroutine[Any, Any, int]:
        return self.receiver.receive_into(buffer)

    def fill(self, sink: BufferSink) -> Coroutine[Any, Any, None]:
        return self.receiver.fill(sink)

    def send(self, item: Buffer) -> Coroutine[Any, Any, None]:
        return self.sender.send_parts((byte_view(item),))

    def send_parts(self, parts: Sequence[Buffer]) -> Coroutine[Any, Any, None]:
        return self.sender.send_parts(parts)

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
        return {**self.receiver.extra_attributes, **_fd_extra(self.receiver._handle, self._extra)}
