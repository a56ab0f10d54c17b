"""The shared-memory ring: a duplex message channel between two processes.

Layout of the segment (``/dev/shm/NAME``)::

    page 0     header: magic, version, lane capacity, pids, attached and
               closed flags, and per lane the producer's line (head, eof, waiting) and the consumer's line
               (tail, gone, sleeping), each on its own cache line
    lane 0     capacity bytes: creator -> attacher
    lane 1     capacity bytes: attacher -> creator

A lane holds records ``[u32 length][u32 0][payload, padded to 8]``; a length
of 0xFFFFFFFF tells the reader to continue at offset 0. ``head`` and ``tail``
are 64-bit byte counters that never wrap, written by one side each.

Rule 1 (crash safety): the producer writes whole records, then stores
``head`` once; the consumer never reads past ``head``. A producer killed
mid-write leaves its half-written record invisible. There is no lock in the
segment that a dead process could hold.
Rule 2 (wake-ups only for sleepers, once per loop iteration): each side
sleeps on its own doorbell, a FIFO next to the segment (``NAME.bell-c``,
``NAME.bell-a``) registered with the loop. A reader with data waiting makes
no system call. A side about to sleep sets its flag, runs a full memory
barrier and checks again; the peer, after its commits (or reads that free
room), runs a full barrier and rings the doorbell (writes a byte) only if
the flag is set. With a barrier on both sides, one of the two always sees
the other: no lost wake-up. The first commit or read of a loop iteration
runs the barrier at once; the others share one more in a loop callback (or
every ``FLUSH_EVERY`` messages), and a side runs it before it waits itself.
The consumer stores ``tail`` (gives room back) in that barrier, not per
message, so a producer watching for room does not trade the line for each one.
Rule 3 (end of life): each side holds an fcntl lock on one byte of the
segment, and the write end of its peer's doorbell. When a process dies the
kernel drops both: the peer's doorbell hangs up, which wakes it at once,
and ``PeerDied`` is raised once the committed messages are read. A clean
close sets the lane's ``eof`` flag first, so the hang-up reads as
``EndOfStream`` instead.
Rule 4 (persist): a creator that closes cleanly also sets the header's
``closed`` flag before dropping its lock. A ring created with ``persist=True``
whose creator is gone can still be attached when that flag is set: the
peer drains what is left, then sees ``EndOfStream``. Without the flag, the
creator died: ``PeerDied``.
Rule 5 (fair): a side that never has to wait still yields to the loop once
its budget (``FAIR_OPS``: a unit per message and per 4 KiB, more for a
doorbell write) is spent, so a flooded ring leaves timeouts and other tasks
their turn.
Rule 6 (spin, then sleep): a receiver with nothing to read first watches
the peer's ``head`` for a short, self-tuned while (``Spinner``), giving its
CPU and the loop their turn every few microseconds, and only then sleeps on
its doorbell.

Speed: a ``send()`` or ``receive()`` that needs no waiting is one call into
``RingCore`` (``_put``: record, payload and the head store; ``_take``: the
bytes), compiled in the accelerator or its Python twin
(``aioipc._core.speedups``); anything else takes the Python slow path.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel

from .._core.errors import FrameTooLarge, RingInUse
from .._core.naming import create_or_open, open_existing
from .._core.streams import FAIR_OPS, FAIR_SHIFT, Buffer, MessageStream, fair_yield
from ._lanes import DEFAULT_SPIN, Lanes, Spinner
from ._segment import KIND, W_CLOSED, attach_ring, check_machine, make_ring, ring_files

__all__ = ["DEFAULT_CAPACITY", "Ring", "RingInUse"]

DEFAULT_CAPACITY = 4 * 2**20
# -- the ring -------------------------------------------------------------------------------


class Ring(Lanes, MessageStream):
    """A duplex message channel in shared memory between its creator and one attached process.

    Get one with :meth:`create` (the creator; removes the ring on close
    unless ``persist=True``) or :meth:`attach` (the one peer). Each side
    sends on its own single-producer single-consumer lane and receives on
    the other's, so request/response works both ways.

    It is a :class:`aioipc.MessageStream`: ``send()``, ``receive()``,
    ``async for``, ``send_eof()``, ``aclose()``, plus :meth:`send_many`,
    :meth:`receive_many` and the zero-copy :meth:`receive_view`.

    Ends of life: after the peer's ``send_eof()`` or ``aclose()``,
    ``receive()`` returns what it committed, then raises ``EndOfStream``;
    ``send()`` to a peer that closed raises ``BrokenResourceError``: the
    first send after a barrier looks (barriers run once per loop iteration
    and every ``FLUSH_EVERY`` messages), so a few more sends of the same
    burst may still be committed, unread, after the peer closed. As with
    a socket, a send that returned is not a delivery. A peer
    that died (even by SIGKILL) is ``PeerDied`` once its committed messages
    are read: a message it was writing when it died is never seen.

    Caveats:
        A message must fit in half a lane: at most ``capacity // 2 - 8``
        bytes (``max_size``). Linux on x86-64 only (the ring relies on its
        memory ordering). One peer per ring: once it
        attached, another ``attach()`` raises :class:`RingInUse`, also after
        the peer left.

        With the accelerator, ``send()`` and ``receive()`` return a
        coroutine without a frame of its own: awaits, ``asyncio`` tasks,
        ``asyncio.iscoroutine()`` and anyio take it as any other, but
        ``inspect.iscoroutine()`` says False.

        Sends are committed at once, but a sleeping peer is woken once per
        loop iteration (the first send of an iteration wakes it at once):
        a task that blocks its loop after several sends delays their delivery
        to a sleeping peer until the loop turns again, as a stream's
        coalesced writes do.

        The spin costs CPU: a receive with nothing to read keeps one core
        busy for up to ``spin`` seconds (default 100 µs; 0 on a one-CPU
        machine) before it sleeps, yielding the CPU (``sched_yield``) and the
        loop every few microseconds. Each time the peer takes longer than
        that, the window halves, down to none, so an idle ring costs no CPU;
        the first answer that comes within ``spin`` seconds brings it back.
        ``spin=0`` always sleeps at once (round trips then cost a doorbell
        wake-up each, about a unix socket's).

    Example::

        # process A
        async with await Ring.create("/jobs", capacity=2**20) as ring:
            await ring.send(b"work")
            print(await ring.receive())

        # process B
        async with await Ring.attach("/jobs") as ring:
            async for job in ring:
                await ring.send(b"done: " + job)
    """

    def __repr__(self) -> str:
        role = "creator" if self.side == 0 else "attached"
        return f"<Ring {self.name!r} {role} capacity={self.capacity}{' closed' if self._closed else ''}>"

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._extra

    # -- creating and attaching ------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        *,
        mode: int = 0o600,
        persist: bool = False,
        max_size: int | None = None,
        spin: float = DEFAULT_SPIN,
    ) -> Ring:
        """Create ring ``name`` ("/name") with ``capacity`` bytes per direction.

        Args:
            capacity: bytes per lane, rounded up to whole pages; messages up
                to half of it fit.
            mode: permission bits of the segment and doorbells, exactly.
            persist: keep the files after ``aclose()`` (``remove_stale_rings()``
                finds them once both processes are gone).
            max_size: refuse larger messages (``FrameTooLarge``), below the lane's own limit.
            spin: at most this many seconds a receive with nothing to read
                watches the lane before it sleeps (0: never); see the class.

        Raises:
            FileExistsError: a ring or segment of that name exists.
            ValueError: bad name, ``capacity`` under one page, or ``spin`` outside 0 to 0.1.
        """
        check_machine()
        spinner = Spinner(spin)
        if capacity < mmap.PAGESIZE:
            raise ValueError(f"capacity must be at least {mmap.PAGESIZE} bytes")
        capacity = -(-capacity // mmap.PAGESIZE) * mmap.PAGESIZE
        (fd, memory, bell_fd, peer_fd), owned = await create_or_open(
            KIND, name, lambda name: make_ring(name, capacity, mode), None, persist=persist
        )
        owned_files = ring_files(name) if owned else ()
        ring = cls(
            name,
            fd,
            memory,
            side=0,
            bell=bell_fd,
            peer_bell=peer_fd,
            owned_files=owned_files,
            max_size=max_size,
            spinner=spinner,
        )
        return ring

    @classmethod
    async def attach(cls, name: str, *, max_size: int | None = None, spin: float = DEFAULT_SPIN) -> Ring:
        """Attach to ring ``name`` as its one peer (``max_size``, ``spin``: as :meth:`create`).

        A ring created with ``persist=True`` can be attached after its
        creator closed it: the peer receives what is left, then
        ``EndOfStream``; its sends raise ``BrokenResourceError``.

        Raises:
            FileNotFoundError: no such ring.
            ValueError: ``name`` is a shared-memory segment but not a ring, or a bad ``spin``.
            RingInUse: another process attached already (now or before).
            PeerDied: the creator died (it did not close the ring).
        """
        check_machine()
        spinner = Spinner(spin)
        fd, memory, bell_fd, peer_fd = await open_existing(KIND, name, attach_ring)
        ring = cls(
            name,
            fd,
            memory,
            side=1,
            bell=bell_fd,
            peer_bell=peer_fd,
            owned_files=(),
            max_size=max_size,
            spinner=spinner,
        )
        return ring

    # -- sending ---------------------------------------------------------------------------

    # send(), receive(), send_many() and receive_many() are RingCore's: one call when nothing
    # must wait, else these.

    async def _send_slow(self, item: Buffer) -> None:
        item, size = self._measure(item)
        await self._send((item,), (size,))  # waits, wraps, or raises

    async def _send_many_slow(self, messages: Sequence[Buffer]) -> None:
        if self._budget <= 0 and not self._sending:  # the fair yield, then the one-call path again
            self._sending = True
            try:
                await fair_yield()
            finally:
                self._sending = False
            self._budget = FAIR_OPS
            return await self.send_many(messages)
        if not isinstance(messages, (list, tuple)):
            messages = list(messages)  # any iterable, taken once
        if not set(map(type, messages)) <= {bytes, bytearray}:
            measured = [self._measure(message) for message in messages]
            messages, sizes = [message for message, _ in measured], [size for _, size in measured]
        else:
            sizes = list(map(len, messages))
            largest = max(sizes, default=0)
            if largest > self.max_size:
                raise FrameTooLarge(largest, self.max_size)
        await self._send(messages, sizes)

    async def send_eof(self) -> None:
        """Tell the peer nothing more will come: it gets ``EndOfStream`` after the rest.

        This side can still receive.
        """
        if self._closed or self._eof_sent:
            return
        self._eof_sent = True
        self._h[self._tx_eof] = 1
        self._sent += 1
        self._flush()
        await anyio.lowlevel.checkpoint()

    # -- receiving -------------------------------------------------------------------------

    async def _receive(self) -> bytes:
        if self._receiving:  # a flag rather than ResourceGuard: this is the hot path
            raise anyio.BusyResourceError("receiving")
        if self._budget <= 0:
            await fair_yield()
            self._budget = FAIR_OPS
        self._receiving = True
        try:
            position, size, tail = await self._next()
        finally:
            self._receiving = False
        position += self._rx_base
        data = self._mmap[position : position + size]
        self._budget -= 1 + (size >> FAIR_SHIFT)
        self._advance(tail, size)
        return data

    async def _receive_many_slow(self, max_messages: int) -> list[bytes]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            if self._budget <= 0:
                await fair_yield()
                self._budget = FAIR_OPS
            await self._next()  # a record is committed
        finally:
            self._receiving = False
        messages = self._take_many(max_messages)
        if messages is None:  # a record the one-call path leaves alone (a bad peer's): read it here
            messages = [await self._receive()]
        return messages

    @asynccontextmanager
    async def receive_view(self) -> AsyncIterator[memoryview]:
        """Receive the next message without copying it: a read-only view into shared memory.

        The message stays in the ring, its space reserved, until the block
        ends; then the view is released and the space given back. If the
        block raises, the message is still consumed.

        Raises:
            As :meth:`receive`; ``BufferError`` at the end of the block if a
            buffer made from the view (``memoryview(view)``, numpy) is still
            alive: copy what you keep.

        Example::

            async with ring.receive_view() as view:
                total += sum(view)
        """
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            self._budget -= 1
            if self._budget <= 0:
                await fair_yield()
                self._budget = FAIR_OPS
            start, size, tail = await self._next()
            view = self._rx[start : start + size].toreadonly()
            try:
                yield view
            finally:
                try:
                    view.release()
                finally:
                    if not self._closed:
                        self._advance(tail, size)
        finally:
            self._receiving = False

    # -- closing ---------------------------------------------------------------------------

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)
            self._closed = True
            self._bell.close()
            for fd in (self._peer_bell, self._fd):
                if fd >= 0:
                    os.close(fd)

    async def aclose(self) -> None:
        """Close this side (idempotent): the peer reads what was sent, then ``EndOfStream``.

        The creator also removes the ring's files (unless it was created with
        ``persist=True``); an attached peer keeps working on its mapping.
        """
        if self._closed:
            return
        h = self._h
        h[self._tx_eof] = 1
        h[self._rx_gone] = 1
        if self.side == 0:
            h[W_CLOSED] = 1  # Rule 4: set while our lock still says we are alive
        self._closed = True
        self._bell.close()
        if self._peer_bell >= 0:
            os.close(self._peer_bell)
        self._unbind()
        for view in self._views:
            view.release()
        try:
            self._mmap.close()
        except BufferError:
            pass  # a view the user kept: the mapping goes when it does
        os.close(self._fd)  # drops our liveness lock
        for file in self._owned_files:
            try:
                os.unlink(file)
            except FileNotFoundError:
                pass
        await anyio.lowlevel.checkpoint()
