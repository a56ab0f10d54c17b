"""Graceful shutdown: a signal cancels the work, cleanup hooks run within a timeout.

Example: a server that drains its connections on SIGTERM or Ctrl-C::

    async def main() -> int:
        async with aioipc.graceful_shutdown(timeout=10) as sd:
            server = await aioipc.serve("unix:/run/app.sock", handler)
            sd.add_hook(server.close, 5)        # stop accepting, 5 s to drain, close
            sd.add_hook(print, "bye")           # hooks run last-in first-out: this one first
            await server.serve_forever()        # cancelled by the signal
        return sd.exit_status                   # 128 + signum after a signal, else 0

    sys.exit(aioipc.run(main()))

Caveats:
    Signals are process-wide and handled by the main thread only (see
    :mod:`aioipc.signals`). A second shutdown signal during the shutdown
    exits at once with ``os._exit(128 + signum)``: no more hooks, no
    ``finally`` blocks, buffered files not flushed (stdout and stderr are).
    That exit is done by the event loop, so a synchronous hook that blocks
    the loop also blocks it; keep sync hooks quick.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, NoReturn

from . import signals as _signals
from . import systemd as _systemd

__all__ = ["GracefulShutdown", "graceful_shutdown"]

logger = logging.getLogger("aioipc")

Hook = Callable[..., Any]


def _describe(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _signal_name(signum: int | None) -> str:
    if signum is None:
        return "request"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


async def _call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
) -> bool:
    """Call ``fn``, awaiting what it returns within ``timeout``; True if it overran (and was cancelled)."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await result
        except TimeoutError:
            if deadline.expired():
                return True
            raise
    return False


class GracefulShutdown:
    """The manager :func:`graceful_shutdown` returns; see there.

    Attributes:
        reason: the signal number that started the shutdown; ``None`` if
            none did (the block ended by itself, or :meth:`trigger` was
            called without a reason).
        triggered: a shutdown was requested (by a signal or :meth:`trigger`).
        failures: ``(hook, exception)`` for each hook that raised or
            overran (``TimeoutError``), in the order they ran.
    """

    def __init__(
        self,
        timeout: float,
        signals: Iterable[int],
        reload: Callable[[], Any] | None,
        reload_signals: Iterable[int],
        notify: bool = False,
    ) -> None:
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        self.timeout = timeout
        self.signals = tuple(signals)
        self.reload_signals = tuple(reload_signals) if reload is not None else ()
        overlap = set(self.signals) & set(self.reload_signals)
        if overlap:
            names = ", ".join(sorted(_signal_name(s) for s in overlap))
            raise ValueError(f"{names} cannot both shut down and reload")
        self._reload = reload
        self._notify = notify
        self._stopping_sent = False
        self.reason: int | None = None
        self.triggered = False
        self.failures: list[tuple[Callable[..., Any], BaseException]] = []
        self._hooks: list[tuple[Hook, tuple[Any, ...], dict[str, Any]]] = []
        self._host: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline: float | None = None
        self._cancel_requested = False
        self._cancelling = 0
        self._exiting = False
        self._stack: AsyncExitStack | None = None
        self._shutdown_receiver: _signals.SignalReceiver | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        state = f"triggered by {_signal_name(self.reason)}" if self.triggered else "running"
        return f"<GracefulShutdown {state} hooks={len(self._hooks)} timeout={self.timeout}>"

    @property
    def exit_status(self) -> int:
        """``128 + signum`` when a signal started the shutdown, else 0 (for ``sys.exit``)."""
        return 0 if self.reason is None else 128 + self.reason

    def add_hook(self, fn: Hook, *args: Any, **kwargs: Any) -> Hook:
        """Run ``fn(*args, **kwargs)`` at shutdown (after the work was cancelled); last added runs first.

        ``fn`` may be sync or return an awaitable (an ``async def``, a
        server's ``close``). Each hook gets what is left of the timeout; one
        that raises or overruns is logged on the ``aioipc`` logger, recorded
        in :attr:`failures`, and the others still run (an async hook started
        after the time ran out is cancelled at its first wait). Returns
        ``fn``, so it also works as a decorator.
        """
        if not callable(fn):
            raise TypeError(f"a shutdown hook must be callable, not {type(fn).__name__}")
        self._hooks.append((fn, args, kwargs))
        return fn

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is ready (``READY=1``, and ``STATUS=status`` when given).

        Sent whatever ``notify`` was; a no-op returning ``False`` when not
        run by systemd (no ``$NOTIFY_SOCKET``), ``True`` when sent.

        Raises:
            OSError, TimeoutError: as :func:`aioipc.systemd.notify` raises them.

        Example::

            server = await aioipc.serve("sd-listen:", handler)
            sd.ready(status=f"serving {server.address}")
        """
        return _systemd.notify("READY=1", *(() if status is None else (f"STATUS={status}",)))

    def _send_stopping(self) -> None:
        if self._notify and not self._stopping_sent:
            self._stopping_sent = True
            try:
                _systemd.notify("STOPPING=1")
            except OSError as exc:
                logger.warning("could not tell systemd STOPPING=1: %s", exc)

    async def _watchdog(self, period: float) -> None:
        """``WATCHDOG=1`` at once, then every quarter period: at least every half even when woken late."""
        while True:
            try:
                _systemd.notify("WATCHDOG=1")
            except OSError as exc:
                logger.warning("could not send systemd WATCHDOG=1: %s", exc)
            await asyncio.sleep(period / 4)

    def trigger(self, reason: int | None = None) -> None:
        """Start the shutdown from code, as a signal would (no-op if already started).

        Must be called on the loop's thread; from another thread use
        ``loop.call_soon_threadsafe(sd.trigger)``.
        """
        if self.triggered:
            return
        self.triggered = True
        self.reason = reason
        logger.info("shutting down on %s (timeout %s s)", _signal_name(reason), self.timeout)
        self._send_stopping()
        if self._host is not None:
            self._cancel_host()

    def _cancel_host(self) -> None:
        assert self._loop is not None
        assert self._host is not None
        if self._deadline is None:
            self._deadline = self._loop.time() + self.timeout
        if not self._exiting:
            self._cancel_requested = True
            self._host.cancel(f"graceful shutdown on {_signal_name(self.reason)}")

    def _force_exit(self, signum: int) -> NoReturn:
        logger.error("second %s during shutdown: exiting now", _signal_name(signum))
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(128 + signum)

    async def _watch(self, receiver: _signals.SignalReceiver) -> None:
        async for signum in receiver:
            if self.triggered:
                self._force_exit(signum)
            self.trigger(signum)

    async def _reload_on_signal(self, receiver: _signals.SignalReceiver) -> None:
        assert self._reload is not None
        async for signum in receiver:
            if self.triggered:
                continue
            logger.info("reloading on %s", _signal_name(signum))
            try:
                await _call(self._reload, (), {}, None)
            except Exception:
                logger.exception("reload callback %s failed", _describe(self._reload))

    async def __aenter__(self) -> GracefulShutdown:
        if self._stack is not None:
            raise RuntimeError("a GracefulShutdown block can be entered only once")
        loop = asyncio.get_running_loop()
        host = asyncio.current_task()
        if host is None:
            raise RuntimeError("graceful_shutdown() must be used inside an asyncio task")
        async with AsyncExitStack() as stack:
            if self.signals:
                receiver = await stack.enter_async_context(_signals.receive(*self.signals))
                self._shutdown_receiver = receiver
                self._tasks.append(loop.create_task(self._watch(receiver)))
            if self.reload_signals:
                reloads = await stack.enter_async_context(
                    _signals.receive(*self.reload_signals, redeliver=False)
                )
                self._tasks.append(loop.create_task(self._reload_on_signal(reloads)))
            period = _watchdog_period() if self._notify else None
            if period is not None:
                self._tasks.append(loop.create_task(self._watchdog(period)))
            self._stack = stack.pop_all()
        self._loop, self._host = loop, host
        self._cancelling = host.cancelling()
        if self.triggered:  # trigger() was called before the block started
            self._cancel_host()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._host is not None
        assert self._stack is not None
        self._exiting = True
        self._send_stopping()
        absorb = False
        if self._cancel_requested:
            absorb = self._host.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError
        try:
            await self._run_hooks()
        finally:
            await self._stop_tasks()
            await self._stack.aclose()
        return absorb

    async def _run_hooks(self) -> None:
        assert self._loop is not None
        if self._deadline is None:
            self._deadline = self._loop.time() + self.timeout
        while self._hooks:
            fn, args, kwargs = self._hooks.pop()
            remaining = max(self._deadline - self._loop.time(), 0)
            try:
                overran = await _call(fn, args, kwargs, remaining)
            except Exception as exc:
                if isinstance(exc.__context__, asyncio.CancelledError):
                    exc.__suppress_context__ = True  # the shutdown's own cancellation: noise in the log
                self.failures.append((fn, exc))
                logger.exception("shutdown hook %s failed", _describe(fn))
                continue
            if overran:
                message = f"overran the shutdown timeout ({self.timeout} s) and was cancelled"
                self.failures.append((fn, TimeoutError(message)))
                logger.error("shutdown hook %s %s", _describe(fn), message)

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        receiver = self._shutdown_receiver
        if receiver is not None and self.triggered:
            for signum in receiver.pending():
                self._force_exit(signum)


def _watchdog_period() -> float | None:
    """Seconds of ``$WATCHDOG_USEC`` when the watchdog is on for this process (``sd_watchdog_enabled``)."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6


def graceful_shutdown(
    timeout: float = 10,
    signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
    *,
    reload: Callable[[], Any] | None = None,
    reload_signals: Iterable[int] = (signal.SIGHUP,),
    notify: bool = False,
) -> GracefulShutdown:
    """Cancel the work inside the block on SIGINT/SIGTERM, then run cleanup hooks within ``timeout``.

    A shutdown signal cancels the task that runs the block (and so, through
    ``asyncio.TaskGroup`` or anyio task groups, the tasks under it). The
    block then ends normally: the cancellation it caused is absorbed, the
    hooks ran last-in first-out, and ``sd.reason`` says which signal it was.
    Hooks also run when the block ends by itself or with an error (which
    then propagates). A second shutdown signal during the shutdown exits
    the process at once with status ``128 + signum`` (130 for Ctrl-C).

    Args:
        timeout: seconds from the signal for the work to unwind and the
            hooks to run (from the end of the block when no signal came).
        signals: the signals that start the shutdown.
        reload: called (sync or async) on each of ``reload_signals``
            instead of shutting down; a reload that raises is logged and
            the service keeps running. Reload signals that come during a
            reload coalesce into one more reload.
        reload_signals: the signals that call ``reload`` (SIGHUP by default).
        notify: speak to systemd (:mod:`aioipc.systemd`; nothing happens
            without ``$NOTIFY_SOCKET``): ``STOPPING=1`` when the stop
            begins, and while the block runs ``WATCHDOG=1`` at least every
            half ``$WATCHDOG_USEC`` when that is set (and ``$WATCHDOG_PID``
            is unset or this process). ``sd.ready()`` sends ``READY=1``.

    Raises:
        ValueError: a negative timeout, a signal in both lists, ``SIGKILL`` or ``SIGSTOP``.
        RuntimeError: not in the main thread, or not in an asyncio task.

    Caveats:
        The block's task is cancelled once, as ``asyncio.timeout`` does:
        code that catches ``CancelledError`` and carries on keeps running.
        While the block runs, this process's handlers for these signals are
        replaced (asyncio's Ctrl-C handler too) and restored afterwards; a
        shutdown signal that arrives just as a block that was not shutting
        down is left goes to the restored handler.

    Example::

        async with aioipc.graceful_shutdown(timeout=10, reload=load_config) as sd:
            sd.add_hook(db.close)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(serve_clients())
                tg.create_task(flush_metrics())
        print("stopped by", sd.reason)
    """
    return GracefulShutdown(timeout, signals, reload, reload_signals, notify)
