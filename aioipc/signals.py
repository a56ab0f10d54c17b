"""Signals as async streams, with every subscriber served and old handlers restored.

``loop.add_signal_handler`` keeps one callback per signal and silently
replaces the previous one. Here one dispatcher per event loop owns the
loop-level handler of each signal and fans every delivery out to all the
receivers subscribed to it; when the last receiver of a signal leaves, the
handler that was in place before (``SIG_DFL``, ``SIG_IGN``, or a Python
function installed with ``signal.signal``, such as asyncio's Ctrl-C
handler) is put back.

Example::

    async with aioipc.signals.receive(signal.SIGHUP, signal.SIGUSR1) as sigs:
        async for signum in sigs:
            print("got", signal.Signals(signum).name)

Caveats:
    Signals are process-wide and only the main thread can handle them: the
    loop that receives them must run in the main thread.

    Deliveries coalesce: a signal that arrives again before a receiver took
    the previous one is seen once by that receiver (the kernel does the same
    for a pending standard signal). Count signals only when the sender waits
    for an acknowledgement between sends.

    A callback installed directly with ``loop.add_signal_handler`` for the
    same signal is replaced while a receiver exists and is not put back;
    subscribe through :func:`receive` instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType

import anyio

__all__ = ["SignalReceiver", "receive", "send", "send_group"]

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def _check_signal(signum: int) -> int:
    try:
        sig = signal.Signals(signum)
    except ValueError:
        if not signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
            raise ValueError(f"{signum!r} is not a signal number") from None
        return int(signum)
    return int(sig)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalReceiver:
    """The signals one :func:`receive` block asked for, in arrival order (coalesced).

    ``async for signum in receiver`` runs until the block ends;
    :meth:`receive` waits for the next one.
    """

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.signals = signals
        self._pending: dict[int, None] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        names = ", ".join(_name(s) for s in self.signals)
        return f"<SignalReceiver [{names}] pending={len(self._pending)}>"

    def pending(self) -> list[int]:
        """Signals delivered and not received yet, oldest first."""
        return list(self._pending)

    def _deliver(self, signum: int) -> None:
        self._pending[signum] = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> int:
        """Wait for the next signal and return its number.

        Raises:
            anyio.ClosedResourceError: the ``receive()`` block has ended.
            anyio.BusyResourceError: another task is already waiting on this receiver.
        """
        while not self._pending:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._waiter is not None:
                raise anyio.BusyResourceError("receiving")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        signum = next(iter(self._pending))
        del self._pending[signum]
        return signum

    def __aiter__(self) -> SignalReceiver:
        return self

    async def __anext__(self) -> int:
        try:
            return await self.receive()
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None

    def _close(self) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(anyio.ClosedResourceError())


class _Dispatcher:
    """Owns the loop-level handler of each subscribed signal for one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.subscribers: dict[int, list[SignalReceiver]] = {}
        self.previous: dict[int, _Handler] = {}

    def _dispatch(self, signum: int) -> None:
        for receiver in list(self.subscribers.get(signum, ())):
            receiver._deliver(signum)

    def subscribe(self, receiver: SignalReceiver) -> None:
        added: list[int] = []
        try:
            for signum in receiver.signals:
                subscribers = self.subscribers.get(signum)
                if subscribers is None:
                    previous = signal.getsignal(signum)
                    self.loop.add_signal_handler(signum, self._dispatch, signum)
                    self.previous[signum] = previous
                    subscribers = self.subscribers[signum] = []
                subscribers.append(receiver)
                added.append(signum)
        except BaseException:
            self.unsubscribe(receiver, added)
            raise

    def unsubscribe(self, receiver: SignalReceiver, signals: list[int]) -> list[int]:
        """Drop ``receiver``; return the signals it left pending as their last subscriber."""
        orphaned = []
        for signum in signals:
            subscribers = self.subscribers[signum]
            subscribers.remove(receiver)
            if subscribers:
                continue
            del self.subscribers[signum]
            previous = self.previous.pop(signum)
            self.loop.remove_signal_handler(signum)
            if previous is not None:
                signal.signal(signum, previous)
            if signum in receiver._pending:
                orphaned.append(signum)
        if not self.subscribers:
            _dispatchers.pop(self.loop, None)
        return orphaned


_dispatchers: dict[asyncio.AbstractEventLoop, _Dispatcher] = {}


@asynccontextmanager
async def receive(*signals: int, redeliver: bool = True) -> AsyncIterator[SignalReceiver]:
    """Subscribe to ``signals`` for the duration of the block.

    Every receiver of a signal gets each delivery, however many receivers
    exist; the previous handler of a signal is restored when its last
    receiver leaves.

    Args:
        signals: signal numbers (``signal.SIGTERM``, real-time signals ...).
        redeliver: when this block was the signal's last receiver and leaves
            with a delivery it did not take, hand that signal to the Python
            handler that is put back (``signal.signal`` handlers, Python's
            ``KeyboardInterrupt`` for ``SIGINT``), so that it is not lost.
            Under ``SIG_DFL`` or ``SIG_IGN`` it is dropped: it arrived while
            this process was handling the signal, when the default action
            (for most signals: end the process) was not in force.

    Raises:
        ValueError: no signal given, not a signal number, or ``SIGKILL`` /
            ``SIGSTOP``, which no process can catch.
        RuntimeError: not in the main thread (signal handlers belong to the
            main thread), or ``SIGCHLD`` under uvloop, which uses it itself.

    Caveats:
        Deliveries coalesce per receiver (see the module docstring).
        Redelivery runs the previous Python handler: for ``SIGINT`` that is
        usually ``KeyboardInterrupt``. A signal that arrives after the
        block has ended meets the restored disposition, as it would have
        without the block.

    Example::

        async with aioipc.signals.receive(signal.SIGUSR1) as sigs:
            async for signum in sigs:
                dump_statistics()
    """
    if not signals:
        raise ValueError("receive() needs at least one signal")
    checked = tuple(dict.fromkeys(_check_signal(s) for s in signals))
    for signum in checked:
        if signum in _UNCATCHABLE:
            raise ValueError(f"{_name(signum)} cannot be caught, blocked or ignored by any process")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "aioipc.signals.receive() must run in the main thread: signal handlers are "
            "process-wide and only the main thread runs them. Receive signals in the loop of "
            "the main thread and pass the news to this thread (loop.call_soon_threadsafe, "
            "asyncio.run_coroutine_threadsafe, a queue)."
        )
    loop = asyncio.get_running_loop()
    dispatcher = _dispatchers.get(loop)
    if dispatcher is None:
        dispatcher = _dispatchers[loop] = _Dispatcher(loop)
    receiver = SignalReceiver(checked)
    dispatcher.subscribe(receiver)
    try:
        yield receiver
    finally:
        receiver._close()
        orphaned = dispatcher.unsubscribe(receiver, list(checked))
        if redeliver:
            for signum in orphaned:
                if callable(signal.getsignal(signum)):  # not SIG_DFL or SIG_IGN: never fatal here
                    signal.raise_signal(signum)


def send(pid: int, sig: int) -> None:
    """Send signal ``sig`` to process ``pid``.

    Raises:
        ValueError: ``pid`` is not positive (0 and negative numbers mean
            process groups: use :func:`send_group`), or ``sig`` is not a signal.
        ProcessLookupError: no such process.
        PermissionError: not allowed to signal it.

    Caveats:
        A pid names a process only until it is reaped and the number reused;
        for children, prefer ``Process.send_signal`` (``aioipc.process``),
        which goes through a pidfd.
    """
    if not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"pid must be a positive process id, not {pid!r}; use send_group() for groups")
    os.kill(pid, _check_signal(sig))


def send_group(pgid: int, sig: int) -> None:
    """Send signal ``sig`` to every process in process group ``pgid`` (0: this process's group).

    Raises:
        ValueError: ``pgid`` is negative, or ``sig`` is not a signal.
        ProcessLookupError: no such process group.
        PermissionError: not allowed to signal some member.

    Example::

        proc = await aioipc.spawn(argv, start_new_session=True)  # the child leads a new group
        aioipc.signals.send_group(proc.pid, signal.SIGTERM)      # it and all its descendants
    """
    if not isinstance(pgid, int) or pgid < 0:
        raise ValueError(f"pgid must be a process group id (0 for our own), not {pgid!r}")
    os.killpg(pgid or os.getpgrp(), _check_signal(sig))
