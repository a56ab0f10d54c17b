"""The one place that decides between the compiled accelerator and pure Python.

The accelerator (``aioipc._core._speedups``, built from ``_speedups.c`` by
``pip install``) batches message socket I/O: ``sendmmsg`` and ``recvmmsg``
move many messages per system call. When it did not build (no compiler),
or ``AIOIPC_NO_SPEEDUPS=1`` is set, the functions here do the same job one
``send`` / ``recvmsg`` per call, with the same arguments and results, so
the callers cannot tell which ran. :data:`ACTIVE` says which did.

Rule 1: sizes come from the caller, never from a peer: a message over its
slot is truncated by the kernel and reported by its real size.
Rule 2: received fds are handed over or closed, never dropped open.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from .attributes import UCRED
from .fdio import close_fds, fds_from_ancillary

__all__ = [
    "ACTIVE",
    "RECV_MAX",
    "Batch",
    "Item",
    "buffer_size",
    "parse_frames",
    "recv_batch",
    "recv_one",
    "send_batch",
]

RECV_MAX = 64
"""The most messages one :func:`recv_batch` takes (one ``recvmmsg``)."""

_TRUNC = int(socket.MSG_TRUNC)
_CTRUNC = int(socket.MSG_CTRUNC)
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


def _choose() -> tuple[
    bool, Callable[..., int], Callable[..., Batch], Callable[..., tuple[int, int, int]] | None
]:
    if os.environ.get("AIOIPC_NO_SPEEDUPS", "") not in ("", "0"):
        return False, _py_send_batch, recv_one, None
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return False, _py_send_batch, recv_one, None
    return True, _speedups.send_batch, _speedups.recv_batch, _speedups.parse_frames


ACTIVE: bool
"""True when the compiled accelerator is in use (built, and not turned off by ``AIOIPC_NO_SPEEDUPS=1``)."""
send_batch: Callable[[socket.socket, list[bytes], int], int]
"""Send ``messages[start:]`` (as many as one ``sendmmsg`` takes), each one message; return how many went.

Raises ``BlockingIOError`` when the peer's queue took none, ``OSError`` for other refusals."""
recv_batch: Callable[[socket.socket, Any, int, int, int, bool, bool], Batch]
"""Receive up to ``count`` messages into ``slot``-byte slots of ``buffer`` (``control`` ancillary bytes
each, after the slots): ``(items, credentials, addresses or None)``. ``buffer`` holds
:func:`buffer_size` bytes. Raises ``BlockingIOError`` when nothing waits."""
parse_frames: Callable[[Any, int, int, int, int, Callable[[bytes], object]], tuple[int, int, int]] | None
"""``parse_frames(buffer, start, end, max_size, batch, append) -> (start, need, bad_size)``, or ``None``
without the accelerator (the caller keeps its own loop).

Hands each whole length-prefixed frame in ``buffer[start:end]`` to ``append`` as bytes, at most
``batch`` of them; stops at a partial frame (``need``: the bytes it takes, header included, else 4)
or at a header over ``max_size`` (``bad_size``, else -1), after every whole frame before it.
Returns the offset of the first byte not parsed."""
ACTIVE, send_batch, recv_batch, parse_frames = _choose()
