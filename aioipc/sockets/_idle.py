"""``idle_timeout``: close a connection that had no traffic for that long.

Rule 1: one timer per watched connection, re-armed lazily: a receive or
send only notes the time; when the timer fires it either moves itself to
``last traffic + timeout`` or cancels the handler's scope. No timer work
per message.
Rule 2: only a completed operation is traffic: a handler blocked in
``send()`` to a peer that never reads is idle, and so is one whose own
short timeouts keep cancelling its ``receive()`` from a silent peer.
Rule 3: the watch has the server cancel the handler's task, and is the
handler's stream itself: no scope, task frame or wrapper coroutine of its
own, for as long as the connection lives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from .._core.server import Server

__all__ = ["IdleWatch"]

logger = logging.getLogger("aioipc")


class IdleWatch:
    """A stream wrapper that notes traffic, and cancels the handler when there is none.

    ``watched = IdleWatch(stream, timeout, name)``, then ``watched.start(server, task)``
    with the handler's task: once ``timeout`` seconds pass without a receive
    or send, the server cancels it (and a warning is logged).
    ``aclose()`` stops watching and closes the stream. ``watched`` offers the
    stream's methods (``receive``, ``send``, ``send_eof``, ``send_fds``,
    ``receive_fds``, ``extra``, iteration).
    """

    __slots__ = ("_last", "_name", "_server", "_stream", "_task", "_timeout", "_timer")

    def __init__(self, stream: Any, timeout: float, name: str) -> None:
        self._stream = stream
        self._timeout = timeout
        self._name = name
        self._last = 0.0  # set by start(), then by every completed operation
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, server: Server, task: asyncio.Task[None]) -> None:
        """Start watching: ``server`` cancels ``task`` once the stream has been idle for the timeout."""
        self._server = server
        self._task = task
        self._last = time.monotonic()
        self._arm(self._timeout)

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        left = self._last + self._timeout - time.monotonic()
        if left > 0:
            self._arm(left)
            return
        self._timer = None
        logger.warning("%s: closing a connection idle for %g s (idle_timeout)", self._name, self._timeout)
        if self._server is not None and self._task is not None:
            self._server.cancel_handler(self._task)

    # -- the stream's face -----------------------------------------------------------------

    async def receive(self, *args: Any) -> Any:
        result = await self._stream.receive(*args)
        self._last = time.monotonic()
        return result

    async def send(self, item: Any) -> None:
        await self._stream.send(item)
        self._last = time.monotonic()

    async def receive_fds(self, *args: Any) -> tuple[bytes, list[int]]:
        result: tuple[bytes, list[int]] = await self._stream.receive_fds(*args)
        self._last = time.monotonic()
        return result

    async def send_fds(self, data: Any, fds: Sequence[int]) -> None:
        await self._stream.send_fds(data, fds)
        self._last = time.monotonic()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._stream.aclose()

    def extra(self, attribute: Any, *default: Any) -> Any:
        return self._stream.extra(attribute, *default)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attributes: Mapping[Any, Callable[[], Any]] = self._stream.extra_attributes
        return attributes

    def __aiter__(self) -> IdleWatch:
        return self

    async def __anext__(self) -> Any:
        # receive() inlined: a handler parked here keeps one coroutine fewer
        try:
            result = await self._stream.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        self._last = time.monotonic()
        return result
