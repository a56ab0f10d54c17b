"""The message sockets' one-message fast paths in pure Python: the twin of the compiled ``MessageCore``.

:mod:`aioipc._core.speedups` chooses between the two (``MessageCore``);
``aioipc.sockets``' ``MessageSocket`` is built on the one chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["HIGH_WATER", "SEND_MAX", "PyMessageCore"]

SEND_MAX = 256
"""Pending messages at which a message socket's send takes the slow path (it flushes, and waits)."""
HIGH_WATER = 64 * 1024
"""Pending bytes, likewise."""


class PyMessageCore:
    """The state of a message socket, and its one-message send and receive fast paths.

    The base of ``aioipc.sockets``' ``MessageSocket``, whose slow paths read
    and write the same attributes and provide ``_send_message(item)`` and
    ``_receive_slow()``. :meth:`send` in the burst state (a flush is
    scheduled: ``_flush_handle``) appends a small message to ``_pending``;
    :meth:`receive` hands out the next plain message of the batch received
    earlier (``_items[_next]``). Neither raises nor waits:
    anything else is the slow path's. The compiled ``MessageCore`` is the
    same, but its ``send()`` and ``receive()`` return a coroutine without a
    frame (``FastOp``) that runs the fast path when first awaited, and hands
    over to the slow path's coroutine when it must wait.
    """

    _items: list[Any]
    _creds: list[bytes | None]
    _addrs: list[Any] | None = None
    _last_creds: bytes | None = None
    _last_sender: Any = None
    _pending: list[bytes]
    _flush_handle: Any = None
    _next = _pending_bytes = _budget = 0
    _batch_largest = -1
    _fair_shift = 62
    _sending = _receiving = False

    # the subclass's slow paths
    _send_message: Callable[[Any], Coroutine[Any, Any, None]]
    _receive_slow: Callable[[], Coroutine[Any, Any, bytes]]

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send one message; it goes out at once, or with the others sent in this loop iteration.

        Waits while the peer's queue is full and enough is pending.

        Raises:
            FrameTooLarge: over ``max_size``; nothing was sent.
            OSError: ``EMSGSIZE`` when the kernel's limit (the socket's
                ``SO_SNDBUF``) is lower than ``max_size``.
            anyio.BrokenResourceError: the peer is gone (now, or for a message sent earlier).
            anyio.BusyResourceError: another task is sending.
        """
        if (
            self._flush_handle is not None
            and type(item) is bytes
            and len(item) <= self._batch_largest
            and self._budget > 0
            and not self._sending
            and len(self._pending) < SEND_MAX
            and self._pending_bytes < HIGH_WATER
        ):
            self._budget -= 1
            self._pending.append(item)
            self._pending_bytes += len(item)
            return
        await self._send_message(item)

    async def receive(self) -> bytes:
        """The next whole message.

        Raises:
            FrameTooLarge: the message was over ``max_size``; it was discarded
                and the next ``receive()`` goes on with the following one.
            anyio.EndOfStream: the peer closed (seqpacket only).
            anyio.BrokenResourceError: the peer vanished with data unread (``ECONNRESET``).
            anyio.BusyResourceError: another task is receiving.
        """
        i = self._next
        items = self._items
        if i < len(items) and not self._receiving:
            item = items[i]
            if type(item) is bytes:
                creds = self._creds[i]
                if creds is not None:
                    self._last_creds = creds
                if self._addrs is not None:
                    self._last_sender = self._addrs[i]
                self._budget -= len(item) >> self._fair_shift
                if i + 1 < len(items):
                    self._next = i + 1
                else:  # the batch is spent: hold no messages
                    self._items, self._creds, self._addrs, self._next = [], [], None, 0
                return item
        return await self._receive_slow()
