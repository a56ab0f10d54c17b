"""The one place that decides between the compiled accelerator and pure Python.

The accelerator (``aioipc._core._speedups``, built from ``_speedups.c`` by
``pip install``) batches message socket I/O: ``sendmmsg`` and ``recvmmsg``
move many messages per system call; it does the shared-memory ring's
one-message sends and receives in one call each (:data:`RingCore`), and
the message sockets' that need no syscall (:data:`MessageCore`); it reads
stream sockets into the length-prefixed framer and parses their frames in one
call, and sends small frames without a Python frame (:data:`FramerCore`,
:data:`recv_fill`, :data:`SendCore`); and it
calls message queues without an exception for "empty" or "full", and does
their sends and receives that need no waiting in one call each (in
:mod:`aioipc._core.queues`, which follows :data:`ACTIVE`). When it did not
build (no compiler), or ``AIOIPC_NO_SPEEDUPS=1`` is set, the functions here
do the same job one ``send`` / ``recvmsg`` per call, and
:class:`PyRingCore` and :class:`PyMessageCore` the fast paths', with the
same arguments and results, so
the callers cannot tell which ran. :data:`ACTIVE` says which did.

Rule 1: sizes come from the caller, never from a peer: a message over its
slot is truncated by the kernel and reported by its real size.
Rule 2: received fds are handed over or closed, never dropped open.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from .attributes import UCRED
from .fdcore import _CTRUNC, DIRECT_WRITE, HIGH_WATER, PySendCore, WithFds, py_recv_fill, py_try_recv_fill
from .fdio import close_fds, fds_from_ancillary
from .messagecore import HIGH_WATER as MSG_HIGH_WATER
from .messagecore import SEND_MAX, PyMessageCore

__all__ = [
    "ACTIVE",
    "compiled",
    "RECV_MAX",
    "RING_RECORD",
    "RING_WRAP",
    "PyRingCore",
    "FramerCore",
    "SendCore",
    "frame_send",
    "framer_setup",
    "recv_fill",
    "try_recv_fill",
    "Batch",
    "Item",
    "MessageCore",
    "PyMessageCore",
    "buffer_size",
    "recv_batch",
    "recv_one",
    "ring_record",
    "send_batch",
    "RingCore",
]


_TRUNC = int(socket.MSG_TRUNC)
_RECV_FLAGS = int(socket.MSG_TRUNC | socket.MSG_CMSG_CLOEXEC)

# One received message: bytes; its real size (int) when it was over the slot; None at the end
# of a seqpacket stream; (bytes, fds, truncated) when fds came with it (or were cut off).
Item = bytes | int | None | tuple[bytes, list[int], bool]
Batch = tuple[list[Item], list[bytes | None], list[Any] | None]


def _py_send_batch(sock: socket.socket, messages: list[bytes], start: int) -> int:
    """``send_batch`` one ``send`` per message; raises only when the first is refused."""
    send = sock.send
    sent = 0
    try:
        for message in messages[start:]:
            send(message)
            sent += 1
    except OSError:
        if not sent:
            raise
    return sent


def recv_one(
    sock: socket.socket,
    buffer: Any,
    slot: int,
    count: int,
    control: int,
    eof_on_empty: bool,
    want_address: bool,
) -> Batch:
    """:func:`recv_batch` one ``recvmsg`` at a time: always one message (any socket family).

    The pure-Python fallback, and what IP sockets use (the accelerator reads Unix addresses only).
    """
    # Into the whole buffer, as the slot would truncate: a message over the slot is oversize either way.
    size, ancdata, flags, address = sock.recvmsg_into((buffer,), control, _RECV_FLAGS)
    creds: bytes | None = None
    item: Item
    if not ancdata:
        if size == 0 and eof_on_empty:
            item = None
        else:
            item = size if size >= slot or flags & _TRUNC else buffer[:size]
        return [item], [creds], [address] if want_address else None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= UCRED.size:
            creds = data[: UCRED.size]
    fds = fds_from_ancillary(ancdata)
    if size == 0 and eof_on_empty and creds is None and not fds:
        item = None
    elif size >= slot or flags & _TRUNC:
        close_fds(fds)
        item = size
    elif fds or flags & _CTRUNC:
        item = (buffer[:size], fds, bool(flags & _CTRUNC))
    else:
        item = buffer[:size]
    return [item], [creds], [address] if want_address else None


def buffer_size(slot: int, count: int, control: int) -> int:
    """The bytes a :func:`recv_batch` buffer needs: ``count`` slots, then their aligned control space."""
    return (slot * count + 7) // 8 * 8 + (control + 7) // 8 * 8 * count


def _choose() -> tuple[bool, Callable[..., int], Callable[..., Batch]]:
    if os.environ.get("AIOIPC_NO_SPEEDUPS", "") not in ("", "0"):
        return False, _py_send_batch, recv_one
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return False, _py_send_batch, recv_one
    return True, _speedups.send_batch, _speedups.recv_batch


ACTIVE: bool
"""True when the compiled accelerator is in use (built, and not turned off by ``AIOIPC_NO_SPEEDUPS=1``)."""
send_batch: Callable[[socket.socket, list[bytes], int], int]
"""Send ``messages[start:]`` (as many as one ``sendmmsg`` takes), each one message; return how many went.

Raises ``BlockingIOError`` when the peer's queue took none, ``OSError`` for other refusals."""
recv_batch: Callable[[socket.socket, Any, int, int, int, bool, bool], Batch]
"""Receive up to ``count`` messages into ``slot``-byte slots of ``buffer`` (``control`` ancillary bytes
each, after the slots): ``(items, credentials, addresses or None)``. ``buffer`` holds
:func:`buffer_size` bytes. Raises ``BlockingIOError`` when nothing waits."""
ACTIVE, send_batch, recv_batch = _choose()


# -- the shared-memory ring's one-message fast paths ---------------------------------------------

RING_RECORD = struct.Struct("<II")
"""A ring record's header: the payload's length, then 0 (the layout is in ``aioipc.shm._ring``)."""
RING_WRAP = 0xFFFFFFFF
"""A record length that tells the reader to continue at offset 0 of the lane."""
_ring_pack, _ring_unpack = RING_RECORD.pack_into, RING_RECORD.unpack_from


def ring_record(lane: Any, capacity: int, tail: int) -> tuple[int, int, int]:
    """(payload offset, length, tail after it) of the record at byte counter ``tail`` of ``lane``."""
    position = tail % capacity
    size: int = _ring_unpack(lane, position)[0]
    if size == RING_WRAP:
        tail += capacity - position
        position = 0
        size = _ring_unpack(lane, 0)[0]
    return position + 8, size, tail + 8 + ((size + 7) & -8)


class PyRingCore:
    """One side of a shared-memory ring: its counters, and one-call send and receive fast paths.

    The base of ``aioipc.shm``'s ``Lanes``, whose slow paths read and write the
    same attributes and provide ``_did()`` and ``_flush()`` (Rule 2 of the
    ring). :meth:`_put` and :meth:`_take` do what needs no waiting and say
    so; otherwise they change nothing, and :meth:`send` and :meth:`receive`
    take the slow path, which also raises every error. The compiled
    ``RingCore`` is the same, but its ``send()`` and ``receive()`` return a
    coroutine without a frame (``FastOp``) that runs the fast path when first
    awaited, and hands over to the slow path's coroutine when it must wait.
    """

    capacity: int
    max_size: int
    _closed = True  # until bound: a half-made ring is a closed one
    _head = _tail = _head_seen = _room_until = _budget = _sent = _read = 0
    _sending = _receiving = _eof_sent = _flush_scheduled = False

    # the subclass's: schedule a barrier (the first message since the last), run one now, the slow paths
    _did: Callable[[], None]
    _flush: Callable[[], None]
    _send_slow: Callable[[Any], Coroutine[Any, Any, None]]
    _receive: Callable[[], Coroutine[Any, Any, bytes]]
    _send_many_slow: Callable[[Sequence[Any]], Coroutine[Any, Any, None]]
    _receive_many_slow: Callable[[int], Coroutine[Any, Any, list[bytes]]]

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send one message; wait while the lane is full.

        A send that finds room copies the message into the lane and commits
        it without waiting for anything; the doorbell, if the peer sleeps,
        rings once per loop iteration for all of them.

        Raises:
            FrameTooLarge: over ``max_size``; nothing was sent.
            anyio.BrokenResourceError: the peer closed its receiving side.
            PeerDied: the peer died while this waited for room.
            anyio.ClosedResourceError: this side closed (or sent EOF).
            anyio.BusyResourceError: another task is sending.
        """
        if not self._put(item):
            await self._send_slow(item)

    async def receive(self) -> bytes:
        """Receive the next message (a copy); wait while the lane is empty.

        Raises:
            anyio.EndOfStream: the peer sent EOF or closed, and everything was read.
            PeerDied: the peer died, and everything it committed was read.
            anyio.ClosedResourceError: this side closed (also wakes a waiting ``receive``).
            anyio.BusyResourceError: another task is receiving.
        """
        data = self._take()
        if data is None:
            data = await self._receive()
        return data

    async def send_many(self, messages: Sequence[Any]) -> None:
        """Send several messages with one commit and at most one wake-up per lane-full.

        A list or tuple of messages that all fit now is written and committed
        at once, without waiting for anything.
        A cancelled ``send_many`` has sent a prefix of ``messages``, each whole.

        Raises:
            As :meth:`send`; ``FrameTooLarge`` before anything is sent.
        """
        await self._send_many_slow(messages)  # the compiled twin commits in one call when all fit

    async def receive_many(self, max_messages: int = 1024) -> list[bytes]:
        """Wait for at least one message, then return every waiting one (up to ``max_messages``).

        Raises:
            ValueError: ``max_messages`` is below 1.
            As :meth:`receive` (only when no message at all could be returned).
        """
        return await self._receive_many_slow(max_messages)

    def _bind(
        self,
        memory: Any,
        tx_offset: int,
        rx_offset: int,
        capacity: int,
        max_size: int,
        words: tuple[int, int, int, int, int],
        fair_shift: int,
        flush_every: int,
    ) -> None:
        """Map the lanes: ``words``, the header word indexes (tx head, tx gone, rx head, tx tail, rx tail)."""
        whole = memoryview(memory)
        self._core_h = whole[: min(tx_offset, rx_offset)].cast("Q")
        self._core_tx = whole[tx_offset : tx_offset + capacity]
        self._core_rx = whole[rx_offset : rx_offset + capacity]
        self._core_memory, self._core_rx_base = memory, rx_offset
        self._core_views = [self._core_h, self._core_tx, self._core_rx, whole]
        self._core_tx_head, self._core_tx_gone, self._core_rx_head = words[:3]
        self._core_tx_tail, self._core_rx_tail = words[3:]
        self.capacity, self.max_size, self._fair_shift, self._flush_every = (
            capacity,
            max_size,
            fair_shift,
            flush_every,
        )

    def _unbind(self) -> None:
        """Let go of the mapping (before it is closed)."""
        for view in getattr(self, "_core_views", ()):
            view.release()

    def _put(self, item: Any) -> bool:
        """Write and commit ``item`` (bytes-like) if it may go now, without waiting; whether it did."""
        if type(item) is not bytes:
            try:
                item = memoryview(item)
            except TypeError:
                return False
            if not item.c_contiguous:
                return False
            item = item.cast("B")
        size = len(item)
        head = self._head
        end = head + 8 + ((size + 7) & -8)
        position = head % self.capacity
        h = self._core_h
        if end > self._room_until:  # look at the peer's tail again (see _ring.c)
            self._room_until = h[self._core_tx_tail] + self.capacity
        if (
            size > self.max_size
            or end > self._room_until
            or position + end - head > self.capacity
            or self._sending
            or self._budget <= 0
            or self._closed
            or self._eof_sent
            or (not self._sent and h[self._core_tx_gone])  # once per barrier (see _ring.c)
        ):
            return False
        tx = self._core_tx
        _ring_pack(tx, position, size, 0)
        tx[position + 8 : position + 8 + size] = item
        h[self._core_tx_head] = self._head = end  # the commit
        self._budget -= 1 + (size >> self._fair_shift)
        sent = self._sent = self._sent + 1
        if sent == 1:
            if not self._flush_scheduled:
                self._did()
        elif sent >= self._flush_every:
            self._flush()
        return True

    def _take(self) -> bytes | None:
        """The next committed message (a copy) if one waits and this side may take it now, else None."""
        if self._receiving or self._budget <= 0 or self._closed:
            return None
        tail = self._tail
        if tail == self._head_seen:
            head = self._head_seen = self._core_h[self._core_rx_head]
            if head == tail:
                return None
        start, size, tail = ring_record(self._core_rx, self.capacity, tail)
        if start + size > self.capacity:
            return None  # not a record this ring writes: the slow path's business
        start += self._core_rx_base
        data: bytes = self._core_memory[start : start + size]
        self._release(tail, 1, size)
        return data

    def _take_many(self, max_messages: int) -> list[bytes] | None:
        """Every committed message (copies), at most ``max_messages``, if this side may take them now,
        else None; ``ValueError`` if ``max_messages`` is below 1."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self._receiving or self._budget <= 0 or self._closed:
            return None
        tail = self._tail
        head = self._head_seen = self._core_h[self._core_rx_head]
        memory, base, lane, capacity = self._core_memory, self._core_rx_base, self._core_rx, self.capacity
        messages: list[bytes] = []
        total = 0
        while tail < head and len(messages) < max_messages:  # a bad length may step past head
            start, size, after = ring_record(lane, capacity, tail)
            if start + size > capacity:
                break  # a bad record: hand out what came before it; the slow path sees it
            start += base
            messages.append(memory[start : start + size])
            total += size
            tail = after
        if not messages:
            return None
        self._release(tail, len(messages), total)
        return messages

    def _release(self, tail: int, count: int, total: int) -> None:
        """Give back the lane up to ``tail``: ``count`` messages of ``total`` bytes were read."""
        self._budget -= count + (total >> self._fair_shift)
        self._tail = tail  # given back to the peer by the barrier (_flush), as in _ring.c
        if total >> self._fair_shift:  # 4 KiB or more: at once
            self._core_h[self._core_rx_tail] = tail
        read = self._read = self._read + count
        if read == count:
            if not self._flush_scheduled:
                self._did()
        elif read >= self._flush_every:
            self._flush()


def compiled(name: str, fallback: Any) -> Any:
    """The accelerator's ``name`` when it is in use, else ``fallback`` (its pure-Python twin)."""
    if ACTIVE:
        from . import _speedups  # type: ignore[attr-defined]

        return getattr(_speedups, name)
    return fallback


RECV_MAX: int = compiled("RECV_MAX", 1)
"""The most messages one :func:`recv_batch` takes (one ``recvmmsg``; 1 without the accelerator,
whose :func:`recv_batch` is :func:`recv_one`)."""


if TYPE_CHECKING:
    RingCore = PyRingCore
else:
    RingCore = compiled("RingCore", PyRingCore)
    """The base of a ring side: the compiled ``RingCore`` or :class:`PyRingCore`."""


# -- message sockets' one-message fast paths (the pure-Python twin: messagecore.PyMessageCore) ----

if TYPE_CHECKING:
    MessageCore = PyMessageCore
else:
    MessageCore = compiled("MessageCore", PyMessageCore)
    """The base of a message socket: the compiled ``MessageCore`` or :class:`PyMessageCore`."""
compiled("message_core_setup", lambda *args: None)(SEND_MAX, MSG_HIGH_WATER)  # the compiled one's limits


# -- the length-prefixed framer's base, and one read into it (_framer.c) -------------------------


FramerCore: Any
"""The compiled base of ``framing.Framer`` (its state, ``get_buffer``, ``buffer_updated``,
``release``, ``next_message`` and ``_parse`` in C), or ``None``: the framer's pure-Python twin is
``framing._PyFramerCore``. The compiled one needs ``framer_setup`` (done by ``framing``) first."""
framer_setup: Callable[..., None]
"""``framer_setup(pool, give_back, no_buffer, no_view, no_parsed, frame_too_large, min_read,
pool_size, batch, need_data)``: what the compiled framer takes from ``framing`` (its buffer pool,
sentinels and limits)."""
recv_fill: Callable[[int, socket.socket | None, Any, int], int | WithFds]
"""``recv_fill(fd, sock, sink, ancsize)``: one ``recvmsg`` (``read`` when ``ancsize < 0``) into
``sink.get_buffer()`` (a ``BufferSink``), handed to ``sink.buffer_updated`` at once so that a cancelled
wait loses nothing, ``sink.release()`` when nothing came. Returns the byte count (0: end of stream)
when no ancillary data came, else :data:`WithFds`. Raises ``BlockingIOError`` when the fd is empty."""
try_recv_fill: Callable[[int, socket.socket | None, Any, int], int | WithFds | None]
""":data:`recv_fill` that returns ``None`` instead of raising ``BlockingIOError``."""
FramerCore = compiled("FramerCore", None)
framer_setup = compiled("framer_setup", lambda *args: None)
recv_fill = compiled("recv_fill", py_recv_fill)
try_recv_fill = compiled("try_recv_fill", py_try_recv_fill)


# -- a send stream over an fd: its state and small sends (_fdsend.c) -----------------------------


if TYPE_CHECKING:
    SendCore = PySendCore
    frame_send: Any = None
else:
    SendCore = compiled("SendCore", PySendCore)
    frame_send = compiled("frame_send", None)
compiled("send_core_setup", lambda *args: None)(DIRECT_WRITE, HIGH_WATER)  # the compiled one's limits
"""``SendCore``: the base of ``FdSendStream``, compiled or :class:`PySendCore`. ``frame_send``: a
framed stream's ``send(item)`` in C (a ``FastOp`` that writes header and payload through the
transport's ``SendCore`` when that needs no wait, else runs ``_send_slow(item)``), or ``None``."""
