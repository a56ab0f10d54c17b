"""Semaphores say which ``async with`` they mean: ``hold()`` a unit, ``closing()`` the handle."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

import aioipc.sync
import aioipc.sysv


async def test_hold_takes_one_unit_and_closing_closes_the_handle(unique_name: str) -> None:
    name = f"/{unique_name}"
    sem = await aioipc.sync.Semaphore.open(name, create=True, initial=4)
    with anyio.fail_after(10):
        async with sem.closing():
            async with sem.hold() as held:
                assert held is sem
                assert sem.value == 3
            assert sem.value == 4
            async with sem:  # the DESIGN contract: acquire ... release
                assert sem.value == 3
            assert sem.value == 4
    assert not Path(f"/dev/shm/sem.{unique_name}").exists()  # noqa: ASYNC240 (closed by its creator: removed)
    with pytest.raises(anyio.ClosedResourceError):
        await sem.acquire()


async def test_hold_times_out_without_running_the_block(unique_name: str) -> None:
    async with (await aioipc.sync.Semaphore.open(f"/{unique_name}", create=True, initial=0)).closing() as sem:
        with anyio.fail_after(10), pytest.raises(TimeoutError, match=unique_name):
            async with sem.hold(timeout=0.05):
                pytest.fail("the block ran without a unit")
        assert sem.value == 0


async def test_system_v_semaphores_hold_and_close_alike() -> None:
    key = int.from_bytes(os.urandom(3)) + 0x7B000000
    sem = await aioipc.sysv.Semaphore.open(key, create=True, initial=2)
    with anyio.fail_after(10):
        async with sem.closing(), sem.hold():
            assert sem.value == 1
    with pytest.raises(anyio.ClosedResourceError):
        sem.release()


async def test_file_lock_timeout_names_the_path_and_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "state.lock"
    with anyio.fail_after(10):
        async with aioipc.sync.FileLock(path):
            with pytest.raises(TimeoutError, match=r"state\.lock.*within 0\.05 s"):
                await aioipc.sync.FileLock(path).acquire(timeout=0.05)
