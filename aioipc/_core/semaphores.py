"""What POSIX and System V semaphore handles share: acquire through the bridge, close once.

A semaphore has no fd, so a contended ``acquire()`` waits in a
:class:`~aioipc._core.bridge.Bridge` thread that blocks in the kernel
(``sem_wait``, ``semop``); uncontended acquires never start a thread.

Rule 1: a cancelled (or timed-out) ``acquire()`` ends its kernel wait at
once (the bridge interrupts it) and never loses or leaks a unit: one the
thread got just before the interrupt is given straight back.
Rule 2: the kernel object is closed only after the bridge has stopped, so
a close never pulls the memory from under a waiting thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import anyio
import anyio.lowlevel

from .bridge import Bridge
from .locks import AcquireRelease

__all__ = ["BridgedSemaphore", "checkpoint_or_release"]


async def checkpoint_or_release(release: Callable[[], None]) -> None:
    """A cancellation point after a fast acquire; cancelled here, the unit is given back."""
    try:
        await anyio.lowlevel.checkpoint()
    except BaseException:
        release()
        raise


class BridgedSemaphore(AcquireRelease):
    """The base of semaphore handles: waiting, timeouts, cancellation and end of life.

    A subclass sets ``owned``, ``_sem`` (has ``.value``), ``_label`` (what
    errors call it), ``_closed = False`` and ``_bridge`` (a ``Bridge`` with
    ``linger=False`` whose ``is_interrupted`` knows its ``EINTR``), and says
    how to try, wait for, give back and remove a unit.
    """

    owned: bool
    _sem: Any  # a posix_ipc or sysv_ipc semaphore: both have ``.value``
    _label: str  # what errors call it: "semaphore '/name'"
    _closed: bool
    _bridge: Bridge

    def _try_acquire(self) -> bool:
        raise NotImplementedError

    def _wait(self) -> None:
        """Block (in a bridge thread) until a unit is taken; fail at once if a signal interrupts."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _remove(self) -> None:
        """Remove the kernel object (this handle created it); one already gone is no error."""
        raise NotImplementedError

    def _close_handle(self) -> None:
        """Free this process's handle of the kernel object (nothing waits on it any more)."""

    @property
    def value(self) -> int:
        """The current count (a snapshot: other processes may change it at once)."""
        self._check()
        return int(self._sem.value)

    def _check(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    def _give_back(self, _: object) -> None:
        self._release()

    async def acquire(self, timeout: float | None = None) -> None:
        """Take one unit, waiting up to ``timeout`` seconds (``None``: for ever).

        Raises:
            TimeoutError: no unit came within ``timeout``.
            anyio.ClosedResourceError: this handle is closed.

        Cancelling it (or its timeout) ends the wait at once and never leaks
        a unit: one that arrived at that moment is released.

        Caveats:
            Tasks that wait on one handle wait in turn, in the order they
            came (one kernel wait per handle at a time).
        """
        self._check()
        if self._try_acquire():
            await checkpoint_or_release(self._release)
            return
        if timeout is not None and timeout <= 0:
            raise TimeoutError(f"{self._label} not acquired")
        try:
            with anyio.fail_after(timeout):
                await self._bridge.run(self._wait, orphan=self._give_back)
        except TimeoutError:
            raise TimeoutError(f"{self._label} not acquired within {timeout} s") from None

    @contextlib.asynccontextmanager
    async def hold(self, timeout: float | None = None) -> AsyncIterator[Self]:
        """Hold one unit for the block: ``acquire(timeout)`` on entry, ``release()`` on exit.

        The same as ``async with sem:``, said unambiguously, and with a timeout.

        Raises:
            TimeoutError: no unit came within ``timeout`` (the block does not run).
            anyio.ClosedResourceError: this handle is closed.

        Example::

            async with sem.hold(timeout=5):
                await do_the_work()
        """
        await self.acquire(timeout)
        try:
            yield self
        finally:
            self.release()

    def closing(self) -> contextlib.aclosing[Self]:
        """Close the handle when the block ends (``aclose()``), holding no unit.

        ``async with sem:`` means acquire/release on a semaphore, unlike on
        other handles; ``async with sem.closing():`` is the one that closes it.

        Example::

            sem = await aioipc.sync.Semaphore.open("/jobs", create=True, initial=4)
            async with sem.closing():        # closed (and removed: we created it) at the end
                async with sem.hold():       # one unit, released at the end
                    await do_the_work()
        """
        return contextlib.aclosing(self)

    def release(self) -> None:
        """Give one unit back (to whichever process waits first).

        Raises:
            anyio.ClosedResourceError: this handle is closed.
        """
        self._check()
        self._release()

    async def aclose(self) -> None:
        """Close the handle (idempotent), and remove the semaphore if this handle created it.

        A task of this process waiting in ``acquire()`` gets ``ClosedResourceError``.
        """
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            await self._bridge.aclose()  # interrupts the waits; shielded inside
        finally:
            if self.owned:
                self._remove()
            self._close_handle()
