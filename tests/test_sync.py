"""POSIX named semaphores and fcntl file locks, between real processes."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import stat
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from helpers import abandon_semaphore_waits, back_to, threads_and_fds

from aioipc import sync
from aioipc.sync import FileLock, Semaphore

HOLDER = textwrap.dedent(
    """
    import asyncio, os, sys
    from aioipc import sync

    async def main():
        kind, target = sys.argv[1], sys.argv[2]
        if kind == "sem":
            sem = await sync.Semaphore.open(target)
            await sem.acquire()
        else:
            lock = sync.FileLock(target, shared=kind == "shared")
            await lock.acquire()
        os.write(1, b"held")
        sys.stdin.read()          # until the parent closes our stdin
        if kind == "sem":
            sem.release()
            await sem.aclose()
        else:
            lock.release()

    asyncio.run(main())
    """
)


@asynccontextmanager
async def holder(tmp_path: Path, kind: str, target: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that holds the semaphore or lock until its stdin closes (or it is killed)."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        kind,
        target,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        with anyio.fail_after(20):
            assert await proc.stdout.readexactly(4) == b"held"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _let_go(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.close()


# -- semaphores -------------------------------------------------------------------------------


async def test_semaphore_basics(unique_name: str) -> None:
    name = "/" + unique_name
    with pytest.raises(FileNotFoundError):
        await Semaphore.open(name)
    async with aclosing(await Semaphore.open(name, create=True, initial=2)) as sem:
        assert stat.S_IMODE(os.stat(f"/dev/shm/sem.{unique_name}").st_mode) == 0o600
        assert sem.value == 2
        with pytest.raises(FileExistsError):
            await Semaphore.open(name, create=True)
        async with aclosing(await Semaphore.open(name, create=True, exist_ok=True)) as other:
            assert not other.owned
            async with other:
                assert sem.value == 1
        await sem.acquire()
        await sem.acquire(timeout=0)
        with pytest.raises(TimeoutError):
            await sem.acquire(timeout=0)
        with pytest.raises(TimeoutError):
            await sem.acquire(timeout=0.05)
        # the abandoned kernel wait ends first: one still blocked could take a unit released
        # below, and give it back a moment later (the listing then read a count of 1)
        await sem._bridge.wait_idle()
        sem.release()
        sem.release()
        assert sem.value == 2
        assert any(info.name == name and info.count == 2 for info in sync.list_semaphores())
    assert not _exists(f"/dev/shm/sem.{unique_name}")
    with pytest.raises(anyio.ClosedResourceError):
        sem.release()
    with pytest.raises(ValueError, match="bad semaphore name"):
        await Semaphore.open("no-slash")


async def test_semaphore_waits_for_another_process(unique_name: str, tmp_path: Path) -> None:
    name = "/" + unique_name
    async with (
        aclosing(await Semaphore.open(name, create=True, initial=1)) as sem,
        holder(tmp_path, "sem", name) as proc,
    ):
        assert sem.value == 0
        waiting = asyncio.ensure_future(sem.acquire(timeout=20))
        await asyncio.sleep(0)
        assert not waiting.done()
        _let_go(proc)
        with anyio.fail_after(20):
            await waiting  # woken by the other process's release, no polling
        assert sem.value == 0
        sem.release()


async def test_cancelled_semaphore_acquire_never_leaks_a_unit(unique_name: str) -> None:
    async with aclosing(await Semaphore.open("/" + unique_name, create=True, initial=0)) as sem:
        for _ in range(20):
            task = asyncio.ensure_future(sem.acquire())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sem.release()  # the abandoned bridge thread may take it, but must give it back
            with anyio.fail_after(10):
                await sem.acquire()
            assert sem.value == 0
        # timed out waits do not leak either
        for _ in range(5):
            with pytest.raises(TimeoutError):
                await sem.acquire(timeout=0.01)
        sem.release()
        with anyio.fail_after(10):
            await sem.acquire()


async def test_abandoned_semaphore_waits_leave_no_thread_and_no_unit_behind(unique_name: str) -> None:
    async with aclosing(await Semaphore.open("/" + unique_name, create=True, initial=0)) as sem:
        await abandon_semaphore_waits(sem)


async def test_closing_a_semaphore_wakes_its_waiters(unique_name: str) -> None:
    sem = await Semaphore.open("/" + unique_name, create=True, initial=0)
    waiting = asyncio.ensure_future(sem.acquire())
    await asyncio.sleep(0)
    await sem.aclose()
    with anyio.fail_after(5), pytest.raises(anyio.ClosedResourceError):
        await waiting
    await sem.aclose()
    with pytest.raises(FileNotFoundError):
        sync.unlink("/" + unique_name)


# -- file locks -------------------------------------------------------------------------------


async def test_exclusive_lock_released_when_holder_is_killed(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    async with holder(tmp_path, "exclusive", path) as proc:
        lock = FileLock(path)
        with pytest.raises(TimeoutError):
            await lock.acquire(timeout=0)
        with pytest.raises(TimeoutError):
            await lock.acquire(timeout=0.05)
        waiting = asyncio.ensure_future(lock.acquire())
        await asyncio.sleep(0)
        proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(20):
            await waiting  # the kernel dropped the dead holder's lock
        assert lock.locked
        assert await proc.wait() == -signal.SIGKILL
        lock.release()
        assert not lock.locked


async def test_shared_locks_coexist_and_exclude_writers(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    async with holder(tmp_path, "shared", path) as proc:
        async with FileLock(path, shared=True) as reader:
            assert reader.locked
        writer = FileLock(path)
        with pytest.raises(TimeoutError):
            await writer.acquire(timeout=0.05)
        waiting = asyncio.ensure_future(writer.acquire())
        await asyncio.sleep(0)
        _let_go(proc)
        with anyio.fail_after(20):
            await waiting
        writer.release()


async def test_cancelled_lock_wait_leaves_the_lock_free(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    first = FileLock(path)
    await first.acquire()
    for _ in range(10):
        second = FileLock(path)
        task = asyncio.ensure_future(second.acquire())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not second.locked
    first.release()
    # the abandoned waiters may get the lock for a moment, but each gives it back
    third = FileLock(path)
    with anyio.fail_after(10):
        await third.acquire()
    with pytest.raises(RuntimeError, match="not reentrant"):
        await third.acquire()
    third.release()
    with pytest.raises(RuntimeError, match="not held"):
        third.release()


async def test_abandoned_lock_waits_leave_no_thread_fd_or_lock_behind(tmp_path: Path) -> None:
    path = str(tmp_path / "lock")
    async with holder(tmp_path, "exclusive", path) as proc:
        baseline = threads_and_fds()
        with anyio.fail_after(30):
            for _ in range(200):
                with pytest.raises(TimeoutError):
                    await FileLock(path).acquire(timeout=0.005)
            await back_to(baseline)
        _let_go(proc)
        with anyio.fail_after(20):
            assert await proc.wait() == 0
    lock = FileLock(path)
    await lock.acquire(timeout=0)  # no abandoned wait took the lock
    lock.release()


async def test_two_locks_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    async with FileLock(path):
        with pytest.raises(TimeoutError):
            await FileLock(path).acquire(timeout=0)
    with pytest.raises(ValueError, match="not a regular file"):
        await FileLock("/dev/null").acquire()


async def test_signals_to_the_waiting_thread_do_not_restart_the_timeout(tmp_path: Path) -> None:
    """The wait is retried after EINTR, but its timeout runs from the first call."""
    path = str(tmp_path / "lock")
    async with holder(tmp_path, "exclusive", path):
        lock = FileLock(path)

        async def interrupt_it() -> None:
            while True:
                for thread in threading.enumerate():
                    if thread.name == "aioipc-lock" and thread.ident is not None:
                        signal.pthread_kill(thread.ident, signal.SIGURG)
                await asyncio.sleep(0.02)

        interrupter = asyncio.ensure_future(interrupt_it())
        started = time.monotonic()
        try:
            with anyio.move_on_after(10), pytest.raises(TimeoutError):
                await lock.acquire(timeout=0.3)
        finally:
            interrupter.cancel()
        assert time.monotonic() - started < 3, "each interrupt restarted the timeout"


async def test_tasks_of_one_handle_wait_in_turn(unique_name: str) -> None:
    async with aclosing(await Semaphore.open("/" + unique_name, create=True, initial=0)) as sem:
        waiting = [asyncio.ensure_future(sem.acquire(timeout=20)) for _ in range(3)]
        await asyncio.sleep(0)
        for _ in range(3):
            sem.release()
        with anyio.fail_after(20):
            await asyncio.gather(*waiting)
        assert sem.value == 0


async def _plant_symlink(target: Path, link: Path) -> None:
    """``ln -s target link``, by another program, as an attacker sharing the directory would."""
    proc = await asyncio.create_subprocess_exec("ln", "-s", str(target), str(link))
    with anyio.fail_after(10):
        assert await proc.wait() == 0


async def test_file_lock_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    link, target = tmp_path / "state.lock", tmp_path / "victim"
    await _plant_symlink(target, link)
    with pytest.raises(OSError, match="symbolic link") as info:
        await FileLock(link).acquire(timeout=0)
    assert info.value.errno == errno.ELOOP
    assert not target.exists()  # a dangling link's target is not created
    target.write_bytes(b"precious")
    with pytest.raises(OSError, match="symbolic link"):
        await FileLock(link).acquire()
    assert target.read_bytes() == b"precious"
