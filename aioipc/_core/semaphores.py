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
from typing import Any, ClassVar, Generic, Self, TypedDict, TypeVar

import anyio
import anyio.lowlevel

from .bridge import Bridge
from .locks import AcquireRelease
from .naming import Kind, create_or_open

__all__ = ["BridgedSemaphore", "SemaphoreOptions", "checkpoint_or_release"]

N = TypeVar("N", str, int)


class SemaphoreOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`BridgedSemaphore.open`, for a subclass that adds its own."""

    create: bool
    initial: int
    exist_ok: bool
    mode: int
    persist: bool


async def checkpoint_or_release(release: Callable[[], None]) -> None:
    """A cancellation point after a fast acquire; cancelled here, the unit is given back."""
    try:
        await anyio.lowlevel.checkpoint()
    except BaseException:
        release()
        raise


class BridgedSemaphore(AcquireRelease, Generic[N]):
    """The base of semaphore handles: opening, waiting, timeouts, cancellation and end of life.

    A subclass names its ``_KIND`` (what errors call it); calls ``__init__``
    with the kernel call a wait blocks in, and how to tell that a signal
    interrupted that wait; and says how to make and open the semaphore, and
    to try, wait for, give back and remove a unit.
    """

    _KIND: ClassVar[Kind[Any]]

    def __init__(
        self,
        sem: Any,
        name: N,
        *,
        owned: bool,
        wait_call: str,
        is_interrupted: Callable[[BaseException], bool],
    ) -> None:
        self._sem = sem  # a posix_ipc or sysv_ipc semaphore: both have ``.value``
        self.owned = owned
        self._label = self._KIND.describe(name)  # what errors call it: "POSIX semaphore /jobs"
        self._closed = False
        self._bridge = Bridge(wait_call, is_interrupted=is_interrupted, linger=False)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"value={self._sem.value}"
        return f"<{self._label} {state} owned={self.owned}>"

    @classmethod
    async def open(
        cls,
        name: N,
        *,
        create: bool = False,
        initial: int = 1,
        exist_ok: bool = False,
        mode: int = 0o600,
        persist: bool = False,
    ) -> Self:
        """Open the semaphore ``name``, or create it holding ``initial`` units.

        Args:
            name: "/name" for a POSIX semaphore; the key for a System V one.
            create: create it (exclusively: an existing one is ``FileExistsError``
                unless ``exist_ok=True``, and is then only opened).
            mode: permission bits of a created semaphore, exactly (0600: only this user).
            persist: a created semaphore outlives this handle's ``aclose()``.

        Raises:
            ValueError: bad name or key, or a negative ``initial``.
            FileNotFoundError: no such semaphore (``create=False``).
            FileExistsError: it exists (``create=True`` and not ``exist_ok``).
            PermissionError: its mode forbids it.
        """
        if initial < 0:
            raise ValueError("initial must be >= 0")
        sem, owned = await create_or_open(
            cls._KIND,
            name,
            lambda name: cls._make(name, mode, initial),
            cls._open_existing,
            create=create,
            exist_ok=exist_ok,
            persist=persist,
            exact_mode=lambda sem: cls._set_mode(sem, mode),
            discard=cls._discard,
        )
        return cls(sem, owned=owned)  # type: ignore[call-arg]  # a subclass takes (sem, owned=)

    @staticmethod
    def _make(name: Any, mode: int, initial: int) -> Any:
        """Create the semaphore exclusively (an existing one raises, as :func:`create_or_open` wants)."""
        raise NotImplementedError

    @staticmethod
    def _open_existing(name: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def _set_mode(sem: Any, mode: int) -> None:
        """Give a created semaphore exactly ``mode`` where its creation applied the umask."""

    @staticmethod
    def _discard(sem: Any) -> None:
        """Remove and close a created semaphore whose mode could not be set."""

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
