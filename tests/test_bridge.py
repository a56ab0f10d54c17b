"""The thread bridge: results, errors, order, interruption on cancel, orphans, closing."""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
from collections.abc import Iterator

import anyio
import posix_ipc
import pytest
from helpers import until

from aioipc._core.bridge import Bridge


def never_interrupted(exc: BaseException) -> bool:
    return False


@pytest.fixture
def semaphore(unique_name: str) -> Iterator[posix_ipc.Semaphore]:
    sem = posix_ipc.Semaphore("/" + unique_name, posix_ipc.O_CREX, 0o600, 0)
    yield sem
    sem.unlink()
    sem.close()


async def asleep_in_kernel(bridge: Bridge) -> None:
    """Wait until the bridge's thread runs a call and sleeps (state S in /proc): inside the call."""
    while True:
        job = bridge._current
        # The thread that runs the call (a thread of an earlier bridge of that name may still be ending).
        threads = [t for t in threading.enumerate() if job is not None and t.ident == job.thread]
        if threads:
            with open(f"/proc/self/task/{threads[0].native_id}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "S":
                    return
        await asyncio.sleep(0)


def test_wake_signal_handler_is_installed() -> None:
    assert signal.getsignal(signal.SIGURG) not in (signal.SIG_DFL, signal.SIG_IGN, None)


async def test_results_errors_and_order() -> None:
    bridge = Bridge("test", is_interrupted=never_interrupted)
    seen: list[int] = []
    try:
        with anyio.fail_after(10):
            results = await asyncio.gather(*(bridge.run(lambda i=i: seen.append(i) or i) for i in range(20)))
            assert results == list(range(20))
            assert seen == list(range(20))
            with pytest.raises(ZeroDivisionError):
                await bridge.run(lambda: 1 // 0)
            assert await bridge.run(threading.current_thread) is not threading.current_thread()
    finally:
        await bridge.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await bridge.run(lambda: 1)


async def test_cancel_interrupts_a_blocking_call(semaphore: posix_ipc.Semaphore) -> None:
    """A cancelled acquire is interrupted (EINTR) and never takes the semaphore later."""
    bridge = Bridge("sem", is_interrupted=lambda exc: isinstance(exc, posix_ipc.SignalError))
    taken: list[None] = []
    try:
        with anyio.fail_after(10):
            task = asyncio.ensure_future(bridge.run(semaphore.acquire, orphan=taken.append))
            await asleep_in_kernel(bridge)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await bridge.wait_idle()
            semaphore.release()
            assert semaphore.value == 1, "the cancelled acquire took the semaphore"
            assert taken == []
    finally:
        await bridge.aclose()


async def test_a_result_that_came_too_late_goes_to_orphan() -> None:
    """A call that cannot be interrupted completes after its caller left: orphan gets the result."""
    bridge = Bridge("late", is_interrupted=never_interrupted)
    gate = threading.Event()
    orphans: list[str] = []
    try:
        with anyio.fail_after(10):
            task = asyncio.ensure_future(bridge.run(lambda: gate.wait() and "done", orphan=orphans.append))
            await asleep_in_kernel(bridge)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert bridge.busy
            gate.set()
            await bridge.wait_idle()
            assert orphans == ["done"]
            assert await bridge.run(lambda: "next") == "next"
    finally:
        await bridge.aclose()


async def test_close_wakes_the_caller_and_stops_the_thread(semaphore: posix_ipc.Semaphore) -> None:
    bridge = Bridge("closing", is_interrupted=lambda exc: isinstance(exc, posix_ipc.SignalError))
    before = {t for t in threading.enumerate() if t.name == "aioipc-closing"}
    task = asyncio.ensure_future(bridge.run(semaphore.acquire))
    try:
        await until(lambda: bridge.busy)
        (thread,) = {t for t in threading.enumerate() if t.name == "aioipc-closing"} - before
        with anyio.fail_after(10):
            await bridge.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await task
        thread.join(5)
        assert not thread.is_alive()
        assert semaphore.value == 0
    finally:
        await bridge.aclose()  # idempotent: also when the test failed before its own aclose


async def test_without_linger_the_thread_ends_when_idle(semaphore: posix_ipc.Semaphore) -> None:
    bridge = Bridge("brief", is_interrupted=never_interrupted, linger=False)
    try:
        with anyio.fail_after(10):
            for _ in range(3):
                assert await bridge.run(threading.get_ident) != threading.get_ident()
                await until(lambda: not [t for t in threading.enumerate() if t.name == "aioipc-brief"])
    finally:
        await bridge.aclose()


async def test_all_or_nothing_returns_what_completed_and_raises_what_did_not(
    semaphore: posix_ipc.Semaphore,
) -> None:
    """A cancelled caller learns the outcome: done means returned, interrupted means raised."""
    bridge = Bridge("exact", is_interrupted=lambda exc: isinstance(exc, posix_ipc.SignalError))
    gate = threading.Event()
    try:
        with anyio.fail_after(10):
            task = asyncio.ensure_future(bridge.run(semaphore.acquire, all_or_nothing=True))
            await asleep_in_kernel(bridge)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task  # interrupted: it took nothing
            semaphore.release()
            assert semaphore.value == 1

            task = asyncio.ensure_future(bridge.run(lambda: gate.wait() and "done", all_or_nothing=True))
            await asleep_in_kernel(bridge)
            task.cancel()
            await asyncio.sleep(0)
            task.cancel()  # cancelled again while it waits: suppressed and uncancelled as well
            await asyncio.sleep(0)
            assert not task.done(), "the caller left before the call's outcome was known"
            gate.set()
            assert await task == "done"
            assert task.cancelling() == 0
    finally:
        await bridge.aclose()


@pytest.mark.parametrize("exact", [False, True])
async def test_a_call_cancelled_while_queued_leaves_no_error_nobody_reads(exact: bool) -> None:
    """Callers cancelled by an anyio scope (which cancels again and again) while their calls wait
    behind a blocking one: the calls are skipped, promptly (an all-or-nothing caller waiting for
    its outcome once spun the loop hot, starving the bridge thread of the GIL for seconds), and
    no future ends as an error that nobody retrieves (the loop would log it, and this suite
    fails on what the loop logs)."""
    bridge = Bridge("skipped", is_interrupted=never_interrupted)
    gate = threading.Event()
    ran: list[int] = []

    scopes: list[anyio.CancelScope] = []

    async def cancelled_while_queued(i: int) -> None:
        with anyio.move_on_after(0.001 * (i % 3)) as scope:
            scopes.append(scope)
            await bridge.run(lambda: ran.append(i), all_or_nothing=exact)

    try:
        with anyio.fail_after(10):
            first = asyncio.ensure_future(bridge.run(gate.wait))
            await asleep_in_kernel(bridge)
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(cancelled_while_queued, i)
                await until(lambda: len(scopes) == 30 and all(scope.cancel_called for scope in scopes))
                # and each caller has had its cancellation, not merely had it called for: a call
                # whose caller is cancelled but not yet told may start, as the thread cannot know
                await anyio.wait_all_tasks_blocked()
                gate.set()
        # From here the thread only skips 30 calls: a bound of seconds, where callers
        # spinning the loop took 1-10 s to let it.
        with anyio.fail_after(2):
            assert await first is True
            await bridge.wait_idle()
        assert ran == []
    finally:
        await bridge.aclose()
    gc.collect()  # an unretrieved error is reported now, inside the test
