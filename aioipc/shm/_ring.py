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
Rule 2 (wake-ups only for sleepers): each side sleeps on its own doorbell, a
FIFO next to the segment (``NAME.bell-c``, ``NAME.bell-a``) registered with
the loop. A reader with data waiting makes no system call. A side about to
sleep sets its flag, runs a full memory barrier and checks again; the peer,
after each commit (or each read that frees room), runs a full barrier and
rings the doorbell (writes a byte) only if the flag is set. With a barrier
on both sides, one of the two always sees the other: no lost wake-up.
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
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel

from .._core.attributes import IPCAttribute
from .._core.errors import FrameTooLarge, PeerDied, RingInUse
from .._core.naming import create_or_open, open_existing
from .._core.streams import FAIR_OPS, FAIR_SHIFT, Buffer, MessageStream, byte_view, fair_yield
from ._segment import (
    HEADER,
    KIND,
    W_CAPACITY,
    W_CLOSED,
    Doorbell,
    attach_ring,
    check_machine,
    make_ring,
    ring_files,
)

__all__ = ["DEFAULT_CAPACITY", "Ring", "RingInUse"]

DEFAULT_CAPACITY = 4 * 2**20
_RECORD = struct.Struct("<II")
_WRAP = 0xFFFFFFFF
_BELL_BYTES = b"\x00"
_RING_UNITS = 4  # budget units a doorbell write costs (measured: 4-5 us against ~1 us a message)

# per lane, from the lane's base word: producer line, consumer line, then the two flags
_HEAD, _EOF, _TAIL, _GONE, _SLEEPING, _WAITING = 0, 1, 8, 9, 16, 24


def _lane_base(lane: int) -> int:
    return 8 + 32 * lane


# -- memory ordering --------------------------------------------------------------------------


def _make_fence() -> Callable[[], None]:
    """A full memory barrier for one ring (one lock per ring, so it is never contended).

    x86-64 keeps plain stores in order and plain loads in order, but may let
    a load pass an earlier store; the wake-up handshake (store my flag, load
    the peer's counter, and the mirror image on the other side) needs a full
    barrier between the two. An uncontended lock's acquire and release are
    locked instructions, which are full barriers, at a fraction of a syscall's cost.
    """
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release

    def fence() -> None:
        acquire()
        release()

    return fence


# -- the ring -------------------------------------------------------------------------------


class Ring(MessageStream):
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
    ``send()`` to a peer that closed raises ``BrokenResourceError``. A peer
    that died (even by SIGKILL) is ``PeerDied`` once its committed messages
    are read: a message it was writing when it died is never seen.

    Caveats:
        A message must fit in half a lane: at most ``capacity // 2 - 8``
        bytes (``max_size``). Linux on x86-64 only (the ring relies on its
        memory ordering). One peer per ring: once it
        attached, another ``attach()`` raises :class:`RingInUse`, also after
        the peer left.

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

    def __init__(
        self,
        name: str,
        fd: int,
        memory: mmap.mmap,
        *,
        side: int,
        bell: int,
        peer_bell: int,
        owned_files: Sequence[str],
        max_size: int | None,
    ) -> None:
        self.name = name
        self.side = side
        self._fd = fd
        self._mmap = memory
        check_machine()
        self._fence = _make_fence()
        base = memoryview(memory)
        header = base[:HEADER]
        self._h = header.cast("Q")
        self.capacity = capacity = self._h[W_CAPACITY]
        tx_lane, rx_lane = side, 1 - side
        self._tx = base[HEADER + tx_lane * capacity : HEADER + (tx_lane + 1) * capacity]
        self._rx = base[HEADER + rx_lane * capacity : HEADER + (rx_lane + 1) * capacity]
        self._views = [self._tx, self._rx, self._h, header, base]
        tx, rx = _lane_base(tx_lane), _lane_base(rx_lane)
        self._tx_head, self._tx_eof, self._tx_tail = tx + _HEAD, tx + _EOF, tx + _TAIL
        self._tx_gone, self._tx_sleeping, self._tx_waiting = tx + _GONE, tx + _SLEEPING, tx + _WAITING
        self._rx_head, self._rx_eof, self._rx_tail = rx + _HEAD, rx + _EOF, rx + _TAIL
        self._rx_gone, self._rx_sleeping, self._rx_waiting = rx + _GONE, rx + _SLEEPING, rx + _WAITING
        self._head = self._h[self._tx_head]  # our own counters, cached: only we write them
        self._tail = self._h[self._rx_tail]
        self._tail_seen = 0  # the peer's tail when our last write found the lane full
        limit = capacity // 2 - _RECORD.size
        self.max_size = limit if max_size is None else min(max_size, limit)
        self._bell = Doorbell(bell)
        self._peer_bell = peer_bell
        self._owned_files = owned_files
        self._receiving = False
        self._sending = False
        self._budget = FAIR_OPS  # fairness: operations left before a yield to the loop
        self._closed = False
        self._eof_sent = False
        self._extra: dict[Any, Callable[[], Any]] = {IPCAttribute.path: lambda: self.name}

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
    ) -> Ring:
        """Create ring ``name`` ("/name") with ``capacity`` bytes per direction.

        Args:
            capacity: bytes per lane, rounded up to whole pages; messages up
                to half of it fit.
            mode: permission bits of the segment and doorbells, exactly.
            persist: keep the files after ``aclose()`` (``remove_stale_rings()``
                finds them once both processes are gone).
            max_size: refuse larger messages (``FrameTooLarge``), below the lane's own limit.

        Raises:
            FileExistsError: a ring or segment of that name exists.
            ValueError: bad name, or ``capacity`` under one page.
        """
        check_machine()
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
        )
        return ring

    @classmethod
    async def attach(cls, name: str, *, max_size: int | None = None) -> Ring:
        """Attach to ring ``name`` as its one peer.

        A ring created with ``persist=True`` can be attached after its
        creator closed it: the peer receives what is left, then
        ``EndOfStream``; its sends raise ``BrokenResourceError``.

        Raises:
            FileNotFoundError: no such ring.
            ValueError: ``name`` is a shared-memory segment but not a ring.
            RingInUse: another process attached already (now or before).
            PeerDied: the creator died (it did not close the ring).
        """
        check_machine()
        fd, memory, bell_fd, peer_fd = await open_existing(KIND, name, attach_ring)
        ring = cls(
            name, fd, memory, side=1, bell=bell_fd, peer_bell=peer_fd, owned_files=(), max_size=max_size
        )
        return ring

    # -- sending ---------------------------------------------------------------------------

    def _ring_peer(self) -> None:
        self._budget -= _RING_UNITS  # a syscall: worth several plain operations of the budget
        if self._peer_bell < 0:
            return  # the peer closed before we attached (Rule 4)
        try:
            os.write(self._peer_bell, _BELL_BYTES)
        except (BlockingIOError, BrokenPipeError):
            pass  # already ringing / the peer is gone, which its hang-up reports

    def _check_send(self) -> None:
        if self._closed or self._eof_sent:
            raise anyio.ClosedResourceError
        if self._h[self._tx_gone]:
            raise anyio.BrokenResourceError(f"the peer of ring {self.name!r} closed its receiving side")

    def _write(self, messages: Sequence[Buffer], sizes: Sequence[int], first: int) -> int:
        """Write as many whole records as fit, commit them with one store; return the next index."""
        h, tx, capacity, pack = self._h, self._tx, self.capacity, _RECORD.pack_into
        head = self._head
        free_until = h[self._tx_tail] + capacity
        index, count = first, len(messages)
        while index < count:
            size = sizes[index]
            end = head + 8 + ((size + 7) & -8)
            position = head % capacity
            if position + end - head > capacity:  # continue at offset 0
                end += capacity - position
                if end > free_until:
                    break
                pack(tx, position, _WRAP, 0)
                position = 0
            elif end > free_until:
                break
            pack(tx, position, size, 0)
            tx[position + 8 : position + 8 + size] = messages[index]
            head = end
            index += 1
        if index != count:
            self._tail_seen = free_until - capacity
        if index != first:
            h[self._tx_head] = self._head = head  # the commit
            self._fence()
            if h[self._tx_sleeping]:
                self._ring_peer()
        return index

    async def _wait_for_space(self) -> None:
        h = self._h
        h[self._tx_waiting] = 1
        try:
            self._fence()
            if h[self._tx_tail] != self._tail_seen or h[self._tx_gone]:
                return
            if self._bell.hung_up:
                raise PeerDied(f"the peer of ring {self.name!r} died")
            await self._bell.wait()
        finally:
            if not self._closed:
                h[self._tx_waiting] = 0

    def _measure(self, message: Buffer) -> tuple[Buffer, int]:
        """The message as bytes-like of unsigned bytes, and its size; ``FrameTooLarge`` if too big."""
        if type(message) is not bytes:
            message = byte_view(message)
        size = len(message)
        if size > self.max_size:
            raise FrameTooLarge(size, self.max_size)
        return message, size

    async def _send(self, messages: Sequence[Buffer], sizes: Sequence[int]) -> None:
        # A flag rather than ResourceGuard: this is the hot path.
        if self._sending:
            raise anyio.BusyResourceError("sending")
        self._sending = True
        try:
            self._budget -= len(messages) + (sum(sizes) >> FAIR_SHIFT)
            if self._budget <= 0:
                await fair_yield()
                self._budget = FAIR_OPS
            self._check_send()
            index = self._write(messages, sizes, 0)
            while index < len(messages):
                await self._wait_for_space()
                self._check_send()
                index = self._write(messages, sizes, index)
        finally:
            self._sending = False

    async def send(self, item: Buffer) -> None:
        """Send one message; wait while the lane is full.

        Raises:
            FrameTooLarge: over ``max_size``; nothing was sent.
            anyio.BrokenResourceError: the peer closed its receiving side.
            PeerDied: the peer died while this waited for room.
            anyio.ClosedResourceError: this side closed (or sent EOF).
            anyio.BusyResourceError: another task is sending.
        """
        item, size = self._measure(item)
        await self._send((item,), (size,))

    async def send_many(self, messages: Sequence[Buffer]) -> None:
        """Send several messages with one commit and at most one wake-up per lane-full.

        A cancelled ``send_many`` has sent a prefix of ``messages``, each whole.

        Raises:
            As :meth:`send`; ``FrameTooLarge`` before anything is sent.
        """
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
        self._fence()
        if self._h[self._tx_sleeping]:
            self._ring_peer()
        await anyio.lowlevel.checkpoint()

    # -- receiving -------------------------------------------------------------------------

    def _peek(self) -> tuple[int, int, int] | None:
        """(payload offset, length, tail after it) of the next committed record, or None."""
        tail = self._tail
        if self._h[self._rx_head] == tail:
            return None
        capacity = self.capacity
        position = tail % capacity
        size = _RECORD.unpack_from(self._rx, position)[0]
        if size == _WRAP:
            tail += capacity - position
            position = 0
            size = _RECORD.unpack_from(self._rx, 0)[0]
        return position + 8, size, tail + 8 + ((size + 7) & ~7)

    def _advance(self, tail: int) -> None:
        h = self._h
        h[self._rx_tail] = self._tail = tail
        self._fence()
        if h[self._rx_waiting]:
            self._ring_peer()

    async def _next(self) -> tuple[int, int, int]:
        h = self._h
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            record = self._peek()
            if record is not None:
                return record
            if h[self._rx_eof]:
                raise anyio.EndOfStream
            if self._bell.hung_up:
                raise PeerDied(f"the peer of ring {self.name!r} died")
            h[self._rx_sleeping] = 1
            try:
                self._fence()
                if h[self._rx_head] == self._tail and not h[self._rx_eof]:
                    await self._bell.wait()
            finally:
                if not self._closed:
                    h[self._rx_sleeping] = 0

    async def receive(self) -> bytes:
        """Receive the next message (a copy); wait while the lane is empty.

        Raises:
            anyio.EndOfStream: the peer sent EOF or closed, and everything was read.
            PeerDied: the peer died, and everything it committed was read.
            anyio.ClosedResourceError: this side closed (also wakes a waiting ``receive``).
            anyio.BusyResourceError: another task is receiving.
        """
        if self._receiving:  # a flag rather than ResourceGuard: this is the hot path
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            self._budget -= 1
            if self._budget <= 0:
                await fair_yield()
                self._budget = FAIR_OPS
            record = None if self._closed else self._peek()
            if record is None:
                record = await self._next()
            start, size, tail = record
            self._budget -= size >> FAIR_SHIFT
            data = self._rx[start : start + size].tobytes()
            self._advance(tail)
            return data
        finally:
            self._receiving = False

    async def receive_many(self, max_messages: int = 1024) -> list[bytes]:
        """Wait for at least one message, then return every waiting one (up to ``max_messages``).

        Raises:
            As :meth:`receive` (only when no message at all could be returned).
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        self._receiving = True
        try:
            if self._budget <= 0:
                await fair_yield()
                self._budget = FAIR_OPS
            start, size, tail = await self._next()
            rx, capacity, unpack = self._rx, self.capacity, _RECORD.unpack_from
            messages = [rx[start : start + size].tobytes()]
            head = self._h[self._rx_head]
            while tail != head and len(messages) < max_messages:
                position = tail % capacity
                size = unpack(rx, position)[0]
                if size == _WRAP:
                    tail += capacity - position
                    position = 0
                    size = unpack(rx, 0)[0]
                messages.append(rx[position + 8 : position + 8 + size].tobytes())
                tail += 8 + ((size + 7) & -8)
            self._budget -= len(messages)
            self._advance(tail)
            return messages
        finally:
            self._receiving = False

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
                        self._advance(tail)
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
