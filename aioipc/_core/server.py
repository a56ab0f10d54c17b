"""The server object that ``aioipc.serve()`` returns, whatever the mechanism.

Rule 1: every handler runs in a group the server owns, hosted by one runner
task (anyio's ``Listener.serve(handler, task_group)`` is the model): one
task per handler, so the caller's cancellations never reach a handler or
the cleanup, and closing needs no shielding tricks: it asks the runner and
waits for it. The group is the set of those tasks, not an anyio task group,
whose ``start_soon`` costs several times a task's memory per handler (an
event, a wrapper coroutine, a handle, a cancel scope), which an idle
connection would keep for its whole life.
Rule 2: a handler that raises is logged on the ``aioipc`` logger and ends
only its own stream; the server and every other handler go on.
Rule 3: a handler is cancelled as a task group cancels its tasks, with no
cancel scope of its own (two sets and a registry entry per connection):
at each of its waits until it ends (level-triggered), except while it is
inside a shielded anyio scope (left, it is cancelled within ``SHIELD_POLL``).

States: *serving* (accepting, or its single handler running) -> *closing*
(:meth:`Server.close` was called, or the body ended: no new handlers;
running ones get the grace period, then are cancelled) -> *closed* (every
handler ended and ``on_close`` ran; :meth:`Server.serve_forever` returns).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

__all__ = ["Server"]

logger = logging.getLogger("aioipc")

try:  # where anyio's asyncio backend keeps each task's innermost cancel scope (read only, Rule 3)
    from anyio._backends import _asyncio as _anyio_asyncio
except ImportError:  # pragma: no cover
    _anyio_asyncio = None  # type: ignore[assignment]
# An anyio that keeps them elsewhere: no scope would be seen shielded, which
# test_close_cancels_handlers_as_a_task_group_does would catch.
_anyio_scopes: Mapping[Any, Any] = getattr(_anyio_asyncio, "_task_states", {})
_STARTED = (inspect.CORO_RUNNING, inspect.CORO_SUSPENDED)
SHIELD_POLL = 0.05
"""How often a cancelled handler inside a shielded scope is looked at again (Rule 3).

A handler that leaves its shielded scope and then waits is cancelled within this."""


def _shielded(task: asyncio.Task[Any], states: Mapping[Any, Any] = _anyio_scopes) -> bool:
    """Whether ``task`` is inside a shielded anyio cancel scope now (then a cancellation waits)."""
    state = states.get(task)
    scope = getattr(state, "cancel_scope", None)
    while scope is not None:
        if scope.shield:
            return True
        scope = scope._parent_scope
    return False


Closer = Callable[[], Awaitable[object]]
Handler = Callable[[Any], Awaitable[object]]
# What the runner task runs inside the task group: an accept loop, or the start of one handler.
Body = Callable[["Server"], Awaitable[object]]


class Server:
    """Runs one handler per connection (or one for a FIFO, queue, ring or datagram socket).

    ``async with server:`` closes it at the end of the block. A handler that
    raises is logged on the ``aioipc`` logger and closes only its own stream.
    A single-handler server closes itself when its handler returns.

    Attributes:
        address: the bound address in address syntax (the real port for ``:0``).

    Example::

        async with await aioipc.serve("unix:/tmp/echo.sock", handler) as server:
            await server.serve_forever()
    """

    def __init__(self, address: str, *, on_close: Closer | None = None) -> None:
        self.address = address
        self._on_close = on_close
        self._connections = 0
        self._closing = False
        self._accepting = anyio.CancelScope()
        self._tasks: set[asyncio.Task[None]] = set()  # the live handlers' (this keeps them alive)
        self._doomed: set[asyncio.Task[None]] = set()  # cancelled handlers not yet ended (Rule 3)
        self._delivery: asyncio.Handle | None = None  # the next round of cancelling them
        self._in_body = False
        self._cancelled = False  # close() cancelled the handlers
        self._drained = anyio.Event()  # the body and every handler have ended
        self._closed = anyio.Event()  # ... and on_close ran
        self._runner: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, address: str, body: Body, *, on_close: Closer | None = None) -> Server:
        """A running server: ``body(server)`` runs in the server's runner task.

        ``body`` starts handlers with :meth:`start_handler`; for a listener
        it is the accept loop, which :meth:`close` cancels. ``on_close``
        runs once every handler has ended.
        """
        server = cls(address, on_close=on_close)
        server.run(body)
        return server

    def run(self, body: Body) -> None:
        """Start serving: ``body(self)`` runs in the runner task, in the accepting scope.

        For a subclass that set itself up first (``start`` does both for the
        rest). :meth:`close` cancels ``body``; its ``finally`` stops accepting.

        Raises:
            RuntimeError: already running.
        """
        if self._runner is not None:
            raise RuntimeError(f"{self!r} is already running")
        self._runner = asyncio.get_running_loop().create_task(self._run(body))

    @classmethod
    def single(
        cls,
        address: str,
        handler: Handler,
        stream: anyio.abc.AsyncResource,
        *,
        on_close: Closer | None = None,
    ) -> Server:
        """A server for an object with one receiving side (a FIFO, a queue, a ring, a datagram socket).

        ``handler(stream)`` runs once, at once; when it ends (or the server
        is closed) ``on_close`` runs (by default ``stream.aclose``, which
        removes what the stream created).
        """

        async def body(server: Server) -> None:
            server.start_handler(handler, stream)

        return cls.start(address, body, on_close=on_close or stream.aclose)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} connections={self.connections}>"

    @property
    def connections(self) -> int:
        """Handlers running now (live connections)."""
        return self._connections

    def is_serving(self) -> bool:
        """``True`` until the server is closing (a single-handler server: until its handler ended)."""
        return not self._closing

    def start_handler(
        self, handler: Handler, stream: Any, on_end: Callable[[], object] | None = None
    ) -> asyncio.Task[None]:
        """Run ``handler(stream)`` in a task of the server's group; the stream is closed when it returns.

        Only from the server's body. ``on_end()`` is called once the stream
        is closed (a slot given back, say); pass one object for every
        handler, not a new closure each time.

        Returns:
            the handler's task: :meth:`cancel_handler` ends it (its stream is closed).
        """
        if not self._in_body:
            raise RuntimeError("start_handler() is for the server's body")
        task = asyncio.get_running_loop().create_task(self._run_handler(handler, stream, on_end))
        self._tasks.add(task)
        self._connections += 1
        if self._cancelled:
            self.cancel_handler(task)
        return task

    async def _run_handler(
        self, handler: Handler, stream: anyio.abc.AsyncResource, on_end: Callable[[], object] | None
    ) -> None:
        try:
            try:
                await handler(stream)
            except Exception:
                logger.exception("%s: a handler raised; closing its stream", self.address)
            finally:
                self._connections -= 1
                with anyio.CancelScope(shield=True):  # not aclose_forcefully: its cancel() formats a repr
                    await stream.aclose()
        finally:
            if on_end is not None:
                on_end()
            task = asyncio.current_task()
            self._tasks.discard(task)
            self._doomed.discard(task)
            self._check_drained()

    def cancel_handler(self, task: asyncio.Task[None]) -> None:
        """Cancel a handler :meth:`start_handler` started, as a cancel scope around it would (Rule 3).

        Its task is cancelled at each wait until it ends, except while it is
        inside a shielded anyio scope; its stream is closed then.
        """
        self._doomed.add(task)
        self._deliver()

    def _deliver(self) -> None:
        # What anyio's CancelScope._deliver_cancellation does, for tasks in no scope of ours:
        # once now, then once a loop iteration until every doomed handler has ended; a handler
        # inside a shielded scope (its stream's closing, say) is looked at again every
        # SHIELD_POLL seconds instead, so that waiting for it costs no CPU.
        if self._delivery is not None:
            self._delivery.cancel()
            self._delivery = None
        current = asyncio.current_task()
        soon = False
        for task in [*self._doomed]:
            if task.done():
                self._doomed.discard(task)
            elif task is current or _shielded(task):
                continue
            elif task._must_cancel:  # type: ignore[attr-defined]
                soon = True
            elif inspect.getcoroutinestate(task.get_coro()) in _STARTED:  # type: ignore[arg-type]
                # (not before its first step: it would never close its stream)
                soon = True
                waiter = task._fut_waiter  # type: ignore[attr-defined]
                if waiter is None or not waiter.done():  # a waiter with a result: taken first
                    task.cancel()
            else:
                soon = True
        if self._doomed:
            loop = asyncio.get_running_loop()
            if soon:
                self._delivery = loop.call_soon(self._deliver)
            else:
                self._delivery = loop.call_later(SHIELD_POLL, self._deliver)

    def _check_drained(self) -> None:
        if not self._tasks and not self._in_body:
            self._drained.set()

    def _cancel_handlers(self) -> None:
        self._cancelled = True
        if self._tasks:
            self._doomed.update(self._tasks)
            self._deliver()

    async def _run(self, body: Body) -> None:
        try:
            try:
                self._in_body = True
                with self._accepting:
                    try:
                        await body(self)
                    except Exception:
                        self._closing = True
                        logger.exception("%s: stopped accepting after an error", self.address)
            finally:
                self._in_body = False
                self._check_drained()
            await self._drained.wait()
        finally:
            self._closing = True
            if self._tasks:  # this task was cancelled (the loop is closing): so are the handlers
                self._cancel_handlers()
                with anyio.CancelScope(shield=True):
                    await self._drained.wait()
            try:
                if self._on_close is not None:
                    with anyio.CancelScope(shield=True):
                        await self._on_close()
            except Exception:
                logger.exception("%s: cleaning up after the server failed", self.address)
            finally:
                self._closed.set()

    async def serve_forever(self) -> None:
        """Wait until the server is closed (:meth:`close`, the ``async with`` block, or its handler ended)."""
        await self._closed.wait()

    async def close(self, grace: float = 0) -> None:
        """Stop accepting, give handlers ``grace`` seconds to finish, cancel the rest, clean up.

        Idempotent; a second call waits for the first to finish. A caller
        cancelled while waiting leaves the cleanup running to its end.
        """
        if not self._closing:
            self._closing = True
            self._accepting.cancel()
            try:
                if grace > 0:
                    with anyio.move_on_after(grace):
                        await self._drained.wait()
            finally:
                self._cancel_handlers()
        await self._closed.wait()

    async def aclose(self) -> None:
        """Close at once: the same as ``close(grace=0)``."""
        await self.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
