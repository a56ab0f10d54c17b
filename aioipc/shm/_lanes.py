"""One side's mechanics of the shared-memory ring: its two lanes, commits, barriers and waits.

The layout and the rules are in the ``_ring`` module's docstring;
:class:`aioipc.shm.Ring` is the stream built on this.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from .._core.attributes import IPCAttribute
from .._core.errors import FrameTooLarge, PeerDied
from .._core.speedups import RING_RECORD as RECORD
from .._core.speedups import RING_WRAP as WRAP
from .._core.speedups import RingCore, ring_record
from .._core.streams import FAIR_OPS, FAIR_SHIFT, Buffer, byte_view, fair_yield
from ._segment import HEADER, W_CAPACITY, Doorbell, check_machine

__all__ = ["DEFAULT_SPIN", "FLUSH_EVERY", "RECORD", "WRAP", "Lanes", "Spinner"]

_BELL_BYTES = b"\x00"
_RING_UNITS = 4  # budget units a doorbell write costs (measured: 4-5 us against ~1 us a message)
DEFAULT_SPIN = 100e-6 if (os.cpu_count() or 1) > 1 else 0.0
FLUSH_EVERY = 64  # messages sent or read between two barriers at most, loop iteration or not
_SPIN_CHECKS = 64  # reads of the peer's head between two looks at the clock (a few µs)
_pack = RECORD.pack_into

# per lane, from the lane's base word: producer line, consumer line, then the two flags
_HEAD, _EOF, _TAIL, _GONE, _SLEEPING, _WAITING = 0, 1, 8, 9, 16, 24


def _lane_words(lane: int) -> tuple[int, int, int, int, int, int]:
    """Header word indexes of lane ``lane``: (head, eof, tail, gone, sleeping, waiting)."""
    base = 8 + 32 * lane
    return base + _HEAD, base + _EOF, base + _TAIL, base + _GONE, base + _SLEEPING, base + _WAITING


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


class Spinner:
    """The self-tuned spin window of one receiving side, in seconds (Rule 6).

    It starts at ``limit``. A wait the spin ended in time keeps it; a sleep
    that lasted longer than ``limit``, or a spin that ended later than that
    (the CPU went to other processes when it yielded), halves it (an idle
    peer soon costs nothing: under a 32nd of ``limit`` it is 0); a sleep
    shorter than ``limit`` sets it to twice that sleep, as spinning would
    have caught it.

    Raises:
        ValueError: ``limit`` is not between 0 and 0.1 seconds.
    """

    __slots__ = ("limit", "window")

    def __init__(self, limit: float) -> None:
        if not 0 <= limit <= 0.1:
            raise ValueError("spin must be between 0 and 0.1 seconds")
        self.limit = limit
        self.window = limit

    def spun(self, seconds: float) -> None:
        """Tune after a spin that saw a message after ``seconds``: late means CPUs are scarce."""
        if seconds > self.limit:
            self._shrink()

    def _shrink(self) -> None:
        window = self.window / 2
        self.window = window if window >= self.limit / 32 else 0.0

    def slept(self, seconds: float) -> None:
        """Tune after a sleep on the doorbell that lasted ``seconds``."""
        limit = self.limit
        if seconds < limit:
            self.window = min(limit, 2 * seconds)
        else:
            self._shrink()


class Lanes(RingCore):
    """The sending lane and the receiving lane of one side, and how it waits on each.

    The counters and flags, and the one-message fast paths (``_put``,
    ``_take``), are :class:`RingCore`'s (compiled, or its Python twin).
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
        spinner: Spinner,
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
        capacity = self._h[W_CAPACITY]
        tx_lane, rx_lane = side, 1 - side
        self._tx = base[HEADER + tx_lane * capacity : HEADER + (tx_lane + 1) * capacity]
        self._rx = base[HEADER + rx_lane * capacity : HEADER + (rx_lane + 1) * capacity]
        self._rx_base = HEADER + rx_lane * capacity  # of the lane in the mapping: slicing it gives bytes
        self._views = [self._tx, self._rx, self._h, header, base]
        (self._tx_head, self._tx_eof, self._tx_tail, self._tx_gone, self._tx_sleeping, self._tx_waiting) = (
            _lane_words(tx_lane)
        )
        (self._rx_head, self._rx_eof, self._rx_tail, self._rx_gone, self._rx_sleeping, self._rx_waiting) = (
            _lane_words(rx_lane)
        )
        limit = capacity // 2 - RECORD.size
        words = (self._tx_head, self._tx_gone, self._rx_head, self._tx_tail, self._rx_tail)
        tx_offset = HEADER + tx_lane * capacity
        size_limit = limit if max_size is None else max(0, min(max_size, limit))
        self._bind(memory, tx_offset, self._rx_base, capacity, size_limit, words, FAIR_SHIFT, FLUSH_EVERY)
        self._head = self._h[self._tx_head]  # our own counters, cached: only we write them
        self._tail = self._h[self._rx_tail]
        self._head_seen = self._tail  # the peer's head as last read: no shared read per message
        self._tail_seen = 0  # the peer's tail when our last write found the lane full
        self._room_until = self._h[self._tx_tail] + capacity  # head may grow to this, as last seen
        self._sent = self._read = 0  # messages committed / read since the last barrier (rule 2)
        self._flush_scheduled = False
        self._spinner = spinner
        self._bell = Doorbell(bell)
        self._peer_bell = peer_bell
        self._owned_files = owned_files
        self._receiving = False
        self._sending = False
        self._budget = FAIR_OPS  # fairness: operations left before a yield to the loop
        self._closed = False
        self._eof_sent = False
        self._extra: dict[Any, Callable[[], Any]] = {IPCAttribute.path: lambda: self.name}

    def _ring_peer(self) -> None:
        self._budget -= _RING_UNITS  # a syscall: worth several plain operations of the budget
        if self._peer_bell < 0:
            return  # the peer closed before we attached (Rule 4)
        try:
            os.write(self._peer_bell, _BELL_BYTES)
        except (BlockingIOError, BrokenPipeError):
            pass  # already ringing / the peer is gone, which its hang-up reports

    def _did(self) -> None:
        """A message was sent or read: the first in a loop iteration flushes now, the rest as it turns."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._on_loop)
            self._flush()

    def _on_loop(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        """One barrier for the messages sent and read since the last: give back the lane up to
        what was read (the fast paths leave the shared tail to this), then ring the peer if it
        sleeps on them."""
        sent, read = self._sent, self._read
        if not (sent or read) or self._closed:
            return
        self._sent = self._read = 0
        h = self._h
        if read:
            h[self._rx_tail] = self._tail
        self._fence()
        if (sent and h[self._tx_sleeping]) or (read and h[self._rx_waiting]):
            self._ring_peer()

    def _check_send(self) -> None:
        if self._closed or self._eof_sent:
            raise anyio.ClosedResourceError
        if self._h[self._tx_gone]:
            raise anyio.BrokenResourceError(f"the peer of ring {self.name!r} closed its receiving side")

    def _write(self, messages: Sequence[Buffer], sizes: Sequence[int], first: int) -> int:
        """Write and commit as many whole records as fit; return the next index."""
        h, tx, capacity, pack = self._h, self._tx, self.capacity, _pack
        head = self._head
        free_until = self._room_until = h[self._tx_tail] + capacity
        index, count = first, len(messages)
        while index < count:
            size = sizes[index]
            end = head + 8 + ((size + 7) & -8)
            position = head % capacity
            if position + end - head > capacity:  # continue at offset 0
                end += capacity - position
                if end > free_until:
                    break
                pack(tx, position, WRAP, 0)
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
            self._sent += index - first
            self._flush()
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

    def _peek(self) -> tuple[int, int, int] | None:
        """(payload offset, length, tail after it) of the next committed record, or None."""
        tail = self._tail
        if tail == self._head_seen and self._see_head() == tail:
            return None
        return ring_record(self._rx, self.capacity, tail)

    def _see_head(self) -> int:
        """Read the peer's head (a cache line it writes) and remember it."""
        head = self._head_seen = self._h[self._rx_head]
        return head

    def _advance(self, tail: int, size: int) -> None:
        """One message of ``size`` bytes was read: the lane up to ``tail`` is the peer's again, given
        back by the next barrier (at once for 4 KiB or more)."""
        self._tail = tail
        if size >> FAIR_SHIFT:
            self._h[self._rx_tail] = tail
        read = self._read = self._read + 1
        if read == 1:
            self._did()
        elif read >= FLUSH_EVERY:
            self._flush()

    async def _spin(self) -> bool:
        """Watch the peer's head for the spin window; whether a record came (Rule 6).

        The loop gets its turn every ``_SPIN_CHECKS`` reads, so other tasks
        run (and this one can be cancelled) while it spins.
        """
        window = self._spinner.window
        if not window:
            return False
        h, index, tail, clock = self._h, self._rx_head, self._tail, time.perf_counter
        start = clock()
        deadline = start + window
        while not self._closed:
            for _ in range(_SPIN_CHECKS):
                if h[index] != tail:
                    self._spinner.spun(clock() - start)
                    return True
            if clock() > deadline or h[self._rx_eof] or self._bell.hung_up:
                break
            os.sched_yield()  # a peer that shares our CPU gets to answer
            await asyncio.sleep(0)
        return False

    async def _next(self) -> tuple[int, int, int]:
        h = self._h
        spun = False
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            record = self._peek()
            if record is not None:
                return record
            if h[self._rx_eof] or self._bell.hung_up:
                if self._see_head() != self._tail:
                    continue  # committed just before the end (after our look): read it first
                if h[self._rx_eof]:
                    raise anyio.EndOfStream
                raise PeerDied(f"the peer of ring {self.name!r} died")
            self._flush()  # the peer may be asleep until it hears of what we did
            if not spun:
                spun = True
                if await self._spin():
                    continue
            h[self._rx_sleeping] = 1
            try:
                self._fence()
                if h[self._rx_head] == self._tail and not h[self._rx_eof]:
                    start = time.perf_counter()
                    await self._bell.wait()
                    self._spinner.slept(time.perf_counter() - start)
            finally:
                if not self._closed:
                    h[self._rx_sleeping] = 0
