"""The server object that ``aioipc.serve()`` returns, whatever the mechanism."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

__all__ = ["Server"]

logger = logging.getLogger("aioipc")

Closer = Callable[[], Awaitable[object]]


async def _close_despite_cancellation(stream: anyio.abc.AsyncResource) -> None:
    """Close ``stream`` at once (forcefully) and to the end, even if this task is cancelled meanwhile.

    A native ``task.cancel()`` reaches through anyio's shielded scopes on
    asyncio, so the close runs in its own task; a cancellation that arrived
    is raised again once the stream is closed.
    """
    closing = asyncio.ensure_future(anyio.aclose_forcefully(stream))
    interrupted = False
    while not closing.done():
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            interrupted = True
    closing.result()
    if interrupted:
        raise asyncio.CancelledError


class Server:
    """Runs one handler task per connection (or one for a FIFO or queue).

    ``async with server:`` closes it at the end of the block. A handler that
    raises is logged on the ``aioipc`` logger and closes only its own stream.

    Attributes:
        address: the bound address in address syntax (the real port for ``:0``).
    """

    def __init__(
        self, address: str, *, stop_accepting: Closer | None = None, on_close: Closer | None = None
    ) -> None:
        self.address = address
        self._stop_accepting = stop_accepting
        self._on_close = on_close
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._closing = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} connections={self.connections}>"

    @property
    def connections(self) -> int:
        """Handlers running now (live connections)."""
        return len(self._tasks)

    def is_serving(self) -> bool:
        return not self._closing

    @classmethod
    def single(
        cls,
        address: str,
        handler: Callable[[Any], Awaitable[object]],
        stream: anyio.abc.AsyncResource,
        *,
        on_close: Closer | None = None,
    ) -> Server:
        """A server for an object with one receiving side (a FIFO, a queue, a ring).

        ``handler(stream)`` runs once, at once; closing the server runs
        ``on_close`` (by default ``stream.aclose``, which removes what the
        stream created).
        """
        server = cls(address, on_close=on_close or stream.aclose)
        server.start_handler(handler, stream)
        return server

    def start_handler(
        self, handler: Callable[[Any], Awaitable[object]], stream: anyio.abc.AsyncResource
    ) -> None:
        """Run ``handler(stream)`` in its own task; the stream is closed when it returns."""
        task = asyncio.get_running_loop().create_task(self._run_handler(handler, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(
        self, handler: Callable[[Any], Awaitable[object]], stream: anyio.abc.AsyncResource
    ) -> None:
        try:
            await handler(stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("handler for %s raised; closing its stream", self.address)
        finally:
            await _close_despite_cancellation(stream)

    async def serve_forever(self) -> None:
        """Wait until the server is closed (by :meth:`close` or the ``async with`` block)."""
        await self._closed.wait()

    async def close(self, grace: float = 0) -> None:
        """Stop accepting, give handlers ``grace`` seconds to finish, cancel the rest, clean up.

        Idempotent; a second call waits for the first to finish.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            if self._stop_accepting is not None:
                await self._stop_accepting()
            if self._tasks and grace > 0:
                await asyncio.wait(set(self._tasks), timeout=grace)
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            if self._on_close is not None:
                await self._on_close()
            self._closed.set()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
