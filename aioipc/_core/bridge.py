"""A worker thread for blocking kernel calls that have no pollable fd.

System V queues cannot be registered with an event loop, so a
:class:`Bridge` runs their blocking calls in one worker thread and hands
each result back to the loop.

Rule 1: the worker blocks in the kernel and never polls. It sleeps on its
job queue when idle and inside the system call when busy; results reach
the loop through ``call_soon_threadsafe``. An idle bridge costs no CPU.
Rule 2: cancelling the task that awaits a call interrupts the call: the
worker thread is sent ``SIGURG`` (see below), the blocking system call fails
with ``EINTR`` having done nothing, and the call is dropped. If it had
completed anyway, its result is handed to the ``orphan`` callback (keep it
for the next caller, or undo it), never lost.
Rule 3: one call runs at a time, in submission order.

Semaphores and record locks (:mod:`aioipc.sync`, System V semaphores) use
another bridge, one thread per contended wait that is never interrupted;
``aioipc.sync._Bridge`` says why the two stay apart.

Why ``SIGURG``: it is the one signal whose default action is to be ignored
and that nothing sends unless a socket asked for out-of-band notification.
A no-op handler for it changes nothing for the process, except that a
blocking system call in the thread the signal is sent to returns ``EINTR``
(``msgrcv``, ``msgsnd``, ``semop`` are never restarted after a handler).
Go's runtime uses it for the same purpose. The handler is installed from
the main thread when this module is first imported there; an existing
handler of yours is kept (any handler interrupts equally well).

A signal sent just before the worker enters the system call would be
missed, so an interrupt is repeated with a growing delay (1 ms to 100 ms)
until the call has returned; this happens only while a cancelled call is
still running, never when idle.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["Bridge"]

T = TypeVar("T")

WAKE_SIGNAL = signal.SIGURG
_FIRST_RETRY = 0.001
_MAX_RETRY = 0.1


def _ignore_wake(signum: int, frame: object) -> None:
    """The wake-up signal's handler: its only job is to make a blocking syscall return EINTR."""


def _install_wake_handler() -> bool:
    """Install the no-op handler if none is installed; ``False`` off the main thread."""
    current = signal.getsignal(WAKE_SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(WAKE_SIGNAL, _ignore_wake)
    return True


_install_wake_handler()


class _Job(Generic[T]):
    __slots__ = ("call", "cancelled", "finished", "future", "orphan", "retry")

    def __init__(
        self, call: Callable[[], T], future: asyncio.Future[T], orphan: Callable[[T], object] | None
    ) -> None:
        self.call = call
        self.future = future
        self.orphan = orphan
        self.cancelled = False
        self.finished = False
        self.retry: asyncio.TimerHandle | None = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Bridge:
    """One worker thread that runs blocking calls for the event loop, one at a time.

    Args:
        name: the thread's name (shows up in debuggers and ``/proc``).
        is_interrupted: tells an exception that means "a signal interrupted
            the call, nothing happened" (``EINTR``) from a real failure; such
            a call is retried unless it was cancelled.

    Raises:
        RuntimeError: (from :meth:`run`) the wake-up signal's handler could not
            be installed because aioipc was first imported off the main thread.

    Caveats:
        Installs a no-op ``SIGURG`` handler for the process (see the module
        docstring). The thread starts at the first :meth:`run` and ends at
        :meth:`aclose`.

    Example::

        bridge = Bridge("semaphore", is_interrupted=lambda exc: isinstance(exc, InterruptedError))
        value = await bridge.run(lambda: blocking_call(), orphan=undo)
        await bridge.aclose()
    """

    def __init__(self, name: str, *, is_interrupted: Callable[[BaseException], bool]) -> None:
        self.name = name
        self._is_interrupted = is_interrupted
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._current: _Job[Any] | None = None
        self._alive: set[_Job[Any]] = set()  # submitted, result not yet delivered to the loop
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "busy" if self.busy else "idle"
        return f"<Bridge {self.name!r} {state}>"

    @property
    def busy(self) -> bool:
        """A call is queued, running, or its result is on its way to the loop.

        That includes a call whose caller was cancelled and that is being
        interrupted; :meth:`wait_idle` waits for it.
        """
        return bool(self._alive)

    async def wait_idle(self) -> None:
        """Wait until every call submitted so far has finished and been delivered (or orphaned)."""
        if not self._alive:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._idle_waiters.remove(waiter)

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            if not _install_wake_handler():
                raise RuntimeError(
                    "aioipc's thread bridge needs a SIGURG handler, which only the main thread can "
                    "install: import aioipc.sysv from the main thread first"
                )
            self._loop = loop
            self._stopped = loop.create_future()
            self._thread = threading.Thread(target=self._work, name=f"aioipc-{self.name}", daemon=True)
            self._thread.start()
        elif loop is not self._loop:
            raise RuntimeError(f"{self!r} is bound to another event loop")
        return loop

    async def run(self, call: Callable[[], T], *, orphan: Callable[[T], object] | None = None) -> T:
        """Run ``call()`` in the worker thread and return its result.

        Args:
            orphan: receives the result of a call that completed although the
                task awaiting it was cancelled (or the bridge closed); called on
                the loop thread. Without it such a result is dropped.

        Raises:
            anyio.ClosedResourceError: the bridge is closed, or was closed while waiting.
            Exception: whatever ``call()`` raised.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        loop = self._start()
        job: _Job[T] = _Job(call, loop.create_future(), orphan)
        self._alive.add(job)
        self._jobs.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            future = job.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self._hand_to_orphan(job, future.result())
            else:
                self._interrupt(job)
            raise

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            with self._lock:
                self._current = job
            outcome: tuple[bool, Any] | None = None
            try:
                while not job.cancelled:
                    try:
                        outcome = (True, job.call())
                    except BaseException as exc:
                        if self._is_interrupted(exc):
                            continue
                        outcome = (False, exc)
                    break
            finally:
                with self._lock:
                    self._current = None
                    job.finished = True
            self._post(self._deliver, job, outcome)
        assert self._stopped is not None
        self._post(_resolve, self._stopped)

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to deliver to
            pass

    def _deliver(self, job: _Job[Any], outcome: tuple[bool, Any] | None) -> None:
        if job.retry is not None:
            job.retry.cancel()
        future = job.future
        if outcome is None:
            if not future.done():
                future.set_exception(anyio.ClosedResourceError())
        elif not future.done():
            ok, value = outcome
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        elif outcome[0]:
            self._hand_to_orphan(job, outcome[1])
        self._alive.discard(job)
        if not self._alive:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _hand_to_orphan(self, job: _Job[Any], value: Any) -> None:
        orphan, job.orphan = job.orphan, None
        if orphan is not None:
            orphan(value)

    def _interrupt(self, job: _Job[Any], delay: float = _FIRST_RETRY) -> None:
        """Stop ``job``: skip it if it has not started, else signal the thread until it returns."""
        with self._lock:
            job.cancelled = True
            if job.finished or self._current is not job:
                return
            assert self._thread is not None
            assert self._thread.ident is not None
            signal.pthread_kill(self._thread.ident, WAKE_SIGNAL)
        assert self._loop is not None
        job.retry = self._loop.call_later(delay, self._interrupt, job, min(delay * 2, _MAX_RETRY))

    async def aclose(self) -> None:
        """Stop the thread (idempotent): a running call is interrupted, queued ones are dropped.

        Tasks awaiting :meth:`run` get ``ClosedResourceError``; a call that
        completed anyway goes to its ``orphan`` callback before this returns.
        """
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._thread is None:
            await anyio.lowlevel.checkpoint()
            return
        for job in list(self._alive):
            if not job.future.done():
                job.future.set_exception(anyio.ClosedResourceError())
            self._interrupt(job)
        self._jobs.put(None)
        assert self._stopped is not None
        with anyio.CancelScope(shield=True):
            await asyncio.shield(self._stopped)  # a cancel must not cancel the future the thread resolves
