"""``idle_timeout``: close a connection that had no traffic for that long.

Rule 1: one timer per watched connection, re-armed lazily: a receive or
send only notes the time; when the timer fires it either moves itself to
``last traffic + timeout`` or cancels the handler's scope. No timer work
per message.
Rule 2: an operation in progress counts as traffic from its start, so a
handler blocked in ``send()`` to a peer that never reads is idle too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio

__all__ = ["IdleWatch"]

logger = logging.getLogger("aioipc")


class IdleWatch:
    """A stream wrapper that notes traffic, and the scope that ends the handler when there is none.

    ``with IdleWatch(stream, timeout, name) as watched: await handler(watched)``
    cancels the handler (and logs) once ``timeout`` seconds pass without a
    receive or send. ``watched`` offers the stream's methods (``receive``,
    ``send``, ``send_eof``, ``send_fds``, ``receive_fds``, ``extra``, iteration).
    """

    def __init__(self, stream: Any, timeout: float, name: str) -> None:
        self._stream = stream
        self._timeout = timeout
        self._name = name
        self._last = time.monotonic()
        self._scope = anyio.CancelScope()
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> IdleWatch:
        self._scope.__enter__()
        self._arm(self._timeout)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return bool(self._scope.__exit__(exc_type, exc, tb))

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        left = self._last + self._timeout - time.monotonic()
        if left > 0:
            self._arm(left)
            return
        self._timer = None
        logger.warning("%s: closing a connection idle for %g s (idle_timeout)", self._name, self._timeout)
        self._scope.cancel()

    # -- the stream's face -----------------------------------------------------------------

    async def receive(self, *args: Any) -> Any:
        self._last = time.monotonic()
        try:
            return await self._stream.receive(*args)
        finally:
            self._last = time.monotonic()

    async def send(self, item: Any) -> None:
        self._last = time.monotonic()
        try:
            await self._stream.send(item)
        finally:
            self._last = time.monotonic()

    async def receive_fds(self, *args: Any) -> tuple[bytes, list[int]]:
        self._last = time.monotonic()
        try:
            result: tuple[bytes, list[int]] = await self._stream.receive_fds(*args)
            return result
        finally:
            self._last = time.monotonic()

    async def send_fds(self, data: Any, fds: Sequence[int]) -> None:
        self._last = time.monotonic()
        try:
            await self._stream.send_fds(data, fds)
        finally:
            self._last = time.monotonic()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
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
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
