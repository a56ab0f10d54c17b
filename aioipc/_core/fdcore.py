"""The pure-Python twins of the compiled stream cores (``speedups`` chooses between them).

:class:`PySendCore` is a send stream's state and its small sends (``_fdsend.c``'s
``SendCore``); :func:`py_recv_fill` is one read into a framer (``_framer.c``'s
``recv_fill``). The framer's own twin is ``framing._PyFramerCore``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .errors import broken

__all__ = [
    "DIRECT_WRITE",
    "HIGH_WATER",
    "PySendCore",
    "WithFds",
    "py_recv_fill",
    "py_try_recv_fill",
    "skip_bytes",
]

_CTRUNC = int(socket.MSG_CTRUNC)
_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
WithFds = tuple[bytes, list[tuple[int, int, bytes]], int]
"""What a read that carried ancillary data gives: its bytes, the ancillary data and the flags."""


def py_recv_fill(fd: int, sock: socket.socket | None, sink: Any, ancsize: int) -> int | WithFds:
    """One read into ``sink`` (``_framer.c``'s ``recv_fill``): the byte count, or with ancillary
    data its bytes, the data and the flags. ``BlockingIOError`` when the fd was empty, or when the
    sink is a length framer whose frame in progress is still not whole (the bytes are in it): the
    caller, parked on the fd, keeps waiting with no wake-up per chunk of a large frame."""
    got = _fill(fd, sock, sink, ancsize)
    framer = isinstance(sink, _length_framer())
    if framer and type(got) is int and got and not sink.parsed and sink._error is None:
        raise BlockingIOError  # a frame still in progress: the caller keeps waiting
    return got


_framer_type: list[type] = []


def _length_framer() -> type:
    """``framing.Framer``, imported at its first use, not here: framing imports this module."""
    if not _framer_type:
        from .framing import Framer

        _framer_type.append(Framer)
    return _framer_type[0]


def py_try_recv_fill(fd: int, sock: socket.socket | None, sink: Any, ancsize: int) -> int | WithFds | None:
    try:
        return _fill(fd, sock, sink, ancsize)
    except BlockingIOError:  # caught here, not in a coroutine that then parks with its frame object
        return None


def _fill(fd: int, sock: socket.socket | None, sink: Any, ancsize: int) -> int | WithFds:
    buffer = sink.get_buffer()
    try:
        if ancsize < 0 or sock is None:
            n = os.readv(fd, (buffer,))
        else:
            n, ancdata, flags, _ = sock.recvmsg_into([buffer], ancsize, _CMSG_CLOEXEC)
    except BlockingIOError:
        sink.release()
        raise
    if ancsize < 0 or sock is None or not (ancdata or flags & _CTRUNC):
        if n:
            sink.buffer_updated(n)
        else:
            sink.release()
        return n
    data = bytes(buffer[:n])
    sink.buffer_updated(n)
    return data, ancdata, flags


HIGH_WATER = 64 * 1024
"""Pending bytes above which a send stream's ``send()`` waits for the peer."""
DIRECT_WRITE = 16 * 1024
"""Sends this large skip a send stream's pending buffer."""
_JOIN_BELOW = 2048
"""Parts of a send at once smaller than this in all are joined and written with one ``write``."""


def skip_bytes(parts: Sequence[Any], offset: int) -> list[memoryview]:
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


class PySendCore:
    """The state of a send stream over a non-blocking fd, and its small sends: the base of
    ``fdstreams.FdSendStream``, whose slow paths read and write the same attributes and provide
    ``_check()`` and ``_flush()``. The compiled ``SendCore`` is the same in C."""

    _pending: bytearray
    _held: memoryview | None  # the unwritten rest of a large send of bytes, written before _pending
    _units: deque[int] | None
    _flush_handle: asyncio.Handle | None
    _error: OSError | None
    _handle: Any  # the FdHandle
    _guard: Any  # the ResourceGuard of the sending direction
    _budget: int
    _parked: bool
    _closed: bool
    _wrote: bool  # written at once with no end of burst scheduled (FdSendStream's "wrote" state)
    _flush: Callable[[], None]

    def _end_burst(self) -> None:
        # The loop iteration of a burst's writes is over: write what queued behind them.
        self._flush_handle = None
        self._wrote = False
        if self._pending:
            self._flush()

    def try_send_parts(self, parts: Sequence[Any]) -> bool:
        """Take ``parts`` now if no wait is needed (see :class:`ByteSendStream`).

        ``parts`` are byte buffers whose ``len()`` counts bytes (pass typed
        views through :func:`byte_view`).
        """
        size = sum(map(len, parts))
        pending = self._pending
        if (
            size >= DIRECT_WRITE
            or len(pending) >= HIGH_WATER
            or self._held is not None
            or self._budget <= 0
            or self._error is not None
            or self._closed
            or self._guard.busy
            or self._handle.fd < 0
        ):
            return False
        self._budget -= 1  # a small send: its bytes are bounded by HIGH_WATER between flushes
        if self._flush_handle is not None or self._parked:
            # burst or parked: a flush is already due, queue behind it.
            for part in parts:
                pending += part
            if self._units is not None:
                self._units.append(size)
            return True
        # idle or wrote: write at once (see FdSendStream's states).
        handle = self._handle
        try:
            if size < _JOIN_BELOW:
                written = os.write(handle.fd, b"".join(parts))
            else:
                written = os.writev(handle.fd, parts)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._error = exc
            raise broken(exc) from exc
        if written < size:
            for view in skip_bytes(parts, written):
                pending += view
            if self._units is not None:
                self._units.append(size - written)
            self._flush_handle = (handle._loop or handle.loop()).call_soon(self._flush)
        elif not self._wrote:  # idle: a lone send schedules nothing
            self._wrote = True
        else:
            # the second in a row: the sends that follow in this iteration queue
            # behind the end of the burst scheduled here and go out together.
            self._flush_handle = (handle._loop or handle.loop()).call_soon(self._end_burst)
        return True
