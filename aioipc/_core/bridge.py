"""Worker threads for blocking kernel calls that have no pollable fd.

System V queues and semaphores, POSIX semaphores and fcntl record locks
cannot be registered with an event loop, so a :class:`Bridge` runs their
blocking calls in a worker thread and hands each result back to the loop.
It is the one bridge of aioipc: every wait without an fd goes through it.

Rule 1: the worker blocks in the kernel and never polls. It sleeps on its
job queue when idle (or ends, with ``linger=False``) and inside the system
call when busy; results reach the loop through ``call_soon_threadsafe``. An
idle bridge costs no CPU.
Rule 2: every wait can be abandoned. Cancelling the task that awaits a call
interrupts the call: the worker thread is sent ``SIGURG`` (see below), the
blocking system call fails with ``EINTR`` having done nothing, and the call
is dropped. If it had completed anyway, its result is handed to the
``orphan`` callback (keep it for the next caller, or undo it), never lost;
or, with ``all_or_nothing=True``, the caller gets it (the cancellation
came too late). Calls must therefore fail on
``EINTR`` rather than retry it: Python's own wrappers retry (PEP 475), so
the waits are made through ctypes (:mod:`aioipc._core.locks`, System V
``semop``) or through extensions that report the signal (``posix_ipc``,
``sysv_ipc``). Timeouts are cancellations too (``anyio.fail_after`` around
the call), so an interrupted wait never restarts a timeout in full.
Rule 3: one call runs at a time, in submission order.

Why ``SIGURG``: it is the one signal whose default action is to be ignored
and that nothing sends unless a socket asked for out-of-band notification.
A no-op handler for it changes nothing for the process, except that a
blocking system call in the thread the signal is sent to returns ``EINTR``
(``msgrcv``, ``msgsnd``, ``semop``, ``sem_wait`` are never restarted after a
handler, and Python installs handlers without ``SA_RESTART``, so
``fcntl(F_OFD_SETLKW)`` is not restarted either). Go's runtime uses it for
the same purpose. The handler is installed from the main thread when this
module is first imported there; an existing handler of yours is kept (any
handler interrupts equally well).

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
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

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


@dataclass(slots=True, eq=False)  # eq=False: jobs are kept in a set, by identity
class _Job(Generic[T]):
    call: Callable[[], T]
    future: asyncio.Future[T]
    orphan: Callable[[T], object] | None
    cancelled: bool = False
    exact: bool = False  # all_or_nothing: only the outcome decides what the caller gets
    finished: bool = False
    outcome: tuple[bool, Any] | None = None  # (ok, value or exception); None: not run
    retry: asyncio.TimerHandle | None = None
    thread: int = 0  # the ident of the thread running it


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Bridge:
    """A worker thread that runs blocking calls for the event loop, one at a time.

    Args:
        name: the thread's name (shows up in debuggers and ``/proc``).
        is_interrupted: tells an exception that means "a signal interrupted
            the call, nothing happened" (``EINTR``) from a real failure; such
            a call is retried unless it was cancelled.
        linger: keep the thread between calls (a queue that waits often);
            ``False`` ends it as soon as no call is queued, so an idle
            semaphore or lock holds no thread.

    Raises:
        RuntimeError: (from :meth:`run`) the wake-up signal's handler could not
            be installed because aioipc was first imported off the main thread.

    Caveats:
        Installs a no-op ``SIGURG`` handler for the process (see the module
        docstring). The thread starts at the first :meth:`run` and ends at
        :meth:`aclose` (or when idle, without ``linger``).

    Example::

        bridge = Bridge("semaphore", is_interrupted=lambda exc: isinstance(exc, InterruptedError))
        value = await bridge.run(lambda: blocking_call(), orphan=undo)
        await bridge.aclose()
    """

    def __init__(
        self, name: str, *, is_interrupted: Callable[[BaseException], bool], linger: bool = True
    ) -> None:
        self.name = name
        self._is_interrupted = is_interrupted
        self._linger = linger
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._current: _Job[Any] | None = None
        self._alive: set[_Job[Any]] = set()  # submitted, result not yet delivered to the loop
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._running = False  # a worker thread is started and has not ended
        self._stopped: set[asyncio.Future[None]] = set()  # one per worker thread not yet ended
        self._loop: asyncio.AbstractEventLoop | None = None
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

    def _submit(self, job: _Job[Any]) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._alive or self._running:
                raise RuntimeError(f"{self!r} is in use by another event loop")
            if not _install_wake_handler():
                raise RuntimeError(
                    "aioipc's thread bridge needs a SIGURG handler, which only the main thread can "
                    "install: import aioipc from the main thread first"
                )
            self._loop = loop
        self._alive.add(job)
        with self._lock:
            self._jobs.put(job)
            if self._running:
                return
            self._running = True
        stopped = loop.create_future()
        self._stopped.add(stopped)
        thread = threading.Thread(target=self._work, args=(stopped,), name=f"aioipc-{self.name}", daemon=True)
        thread.start()

    async def run(
        self,
        call: Callable[[], T],
        *,
        orphan: Callable[[T], object] | None = None,
        all_or_nothing: bool = False,
    ) -> T:
        """Run ``call()`` in the worker thread and return its result.

        Args:
            orphan: receives the result of a call that completed although the
                task awaiting it was cancelled (or the bridge closed); called on
                the loop thread. Without it such a result is dropped.
            all_or_nothing: a cancelled caller waits (for the moment an
                interrupt takes) to learn whether the call did its work: if
                it did, its result is returned and the cancellation is
                suppressed (an anyio cancel scope cancels again at the next
                checkpoint; a one-shot ``Task.cancel()`` is consumed, as by
                any call that completed); if not, ``CancelledError`` is
                raised. So a call that raised did nothing (a send that
                raised sent nothing).

        Raises:
            anyio.ClosedResourceError: the bridge is closed, or was closed while waiting.
            Exception: whatever ``call()`` raised.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        job: _Job[T] = _Job(call, asyncio.get_running_loop().create_future(), orphan)
        job.exact = all_or_nothing
        self._submit(job)
        if all_or_nothing:
            return await self._run_all_or_nothing(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            future = job.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self._hand_to_orphan(job, future.result())
            else:
                self._interrupt(job)
            raise

    async def _run_all_or_nothing(self, job: _Job[T]) -> T:
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            if not job.future.done():
                self._interrupt(job)
            # The outcome, read below, decides. Shielded from anyio's cancel scope, which would
            # cancel this wait again at every loop iteration: a hot loop that, holding the GIL,
            # slows the very thread this waits for.
            again = 0  # plain Task.cancel() calls still reach a task inside an anyio shield
            with anyio.CancelScope(shield=True):
                while not job.future.done():
                    try:
                        await asyncio.shield(job.future)
                    except asyncio.CancelledError:
                        again += 1
                    except BaseException:  # the job failed: the outcome below says so
                        pass
            if not job.future.cancelled():
                # Retrieved here: the future may have failed while no shield watched it
                # (between a repeated cancel and the next shield), and the loop would log it.
                job.future.exception()
            if job.outcome is None or not job.outcome[0]:
                raise  # it did nothing (interrupted, or failed)
            # It happened: the caller must hear so. The cancellation is suppressed (and
            # uncancelled, as asyncio asks); an anyio scope cancels again at the next checkpoint.
            task = asyncio.current_task()
            assert task is not None
            for _ in range(1 + again):
                task.uncancel()
            return job.future.result()

    def _work(self, stopped: asyncio.Future[None]) -> None:
        me = threading.get_ident()
        while True:
            if self._linger:
                job = self._jobs.get()
            else:
                with self._lock:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._running = False
                        break
            if job is None:
                break
            with self._lock:
                self._current = job
                job.thread = me
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
        self._post(self._thread_ended, stopped)

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to deliver to
            pass

    def _thread_ended(self, stopped: asyncio.Future[None]) -> None:
        self._stopped.discard(stopped)
        _resolve(stopped)

    def _deliver(self, job: _Job[Any], outcome: tuple[bool, Any] | None) -> None:
        if job.retry is not None:
            job.retry.cancel()
        job.outcome = outcome
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
        """Stop ``job``: skip it if it has not started, else signal its thread until it returns."""
        with self._lock:
            job.cancelled = True
            if job.finished or self._current is not job:
                return
            signal.pthread_kill(job.thread, WAKE_SIGNAL)
        assert self._loop is not None
        job.retry = self._loop.call_later(delay, self._interrupt, job, min(delay * 2, _MAX_RETRY))

    async def aclose(self) -> None:
        """Stop the thread (idempotent): a running call is interrupted, queued ones are dropped.

        Tasks awaiting :meth:`run` get ``ClosedResourceError``; a call that
        completed anyway goes to its ``orphan`` callback before this returns,
        and no thread of this bridge is left running a call.
        """
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        for job in list(self._alive):
            if not job.future.done() and not job.exact:
                job.future.set_exception(anyio.ClosedResourceError())
            self._interrupt(job)
        self._jobs.put(None)
        with anyio.CancelScope(shield=True):
            for stopped in list(self._stopped):
                # a cancel must not cancel the future the thread resolves
                await asyncio.shield(stopped)
            await anyio.lowlevel.checkpoint()
