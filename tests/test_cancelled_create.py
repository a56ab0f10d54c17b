"""A create, open or attach cancelled at its checkpoint leaves nothing behind."""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioipc.fifo
import aioipc.mq
import aioipc.shm
import aioipc.sync


async def _cancelled(make: Callable[[], Awaitable[Any]]) -> None:
    """Await ``make()`` in a scope that is already cancelled: it must not return."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await make()
        pytest.fail("a cancelled create returned")


async def test_fifo(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "cancelled.fifo"
    await _cancelled(lambda: aioipc.fifo.create(path))
    assert not path.exists()
    os.mkfifo(path)
    fds_before = len(os.listdir("/proc/self/fd"))
    await _cancelled(lambda: aioipc.fifo.open_reader(path, persistent=True))
    assert len(os.listdir("/proc/self/fd")) == fds_before


async def test_posix_objects(unique_name: str) -> None:
    name = "/" + unique_name
    await _cancelled(lambda: aioipc.mq.open(name, create=True))
    await _cancelled(lambda: aioipc.shm.SharedMemory.create(name, 64))
    await _cancelled(lambda: aioipc.sync.Semaphore.open(name, create=True))
    await _cancelled(lambda: aioipc.shm.Ring.create(name, 4096))
    assert not [n for n in os.listdir("/dev/shm") if unique_name in n]
    with pytest.raises(FileNotFoundError):
        await aioipc.mq.open(name)


async def test_ring_attach_does_not_use_up_the_ring(unique_name: str) -> None:
    name = "/" + unique_name
    async with await aioipc.shm.Ring.create(name, 4096) as ring:
        await _cancelled(lambda: aioipc.shm.Ring.attach(name))
        async with await aioipc.shm.Ring.attach(name) as peer:
            await peer.send(b"hi")
            assert await ring.receive() == b"hi"


async def test_sysv_objects() -> None:
    pytest.importorskip("sysv_ipc")
    import aioipc.sysv

    key = random.randrange(1, 2**31 - 2)
    await _cancelled(lambda: aioipc.sysv.MessageQueue.open(key, create=True))
    await _cancelled(lambda: aioipc.sysv.SharedMemory.create(key, 64))
    await _cancelled(lambda: aioipc.sysv.Semaphore.open(key, create=True))
    with pytest.raises(FileNotFoundError):
        await aioipc.sysv.MessageQueue.open(key)
    with pytest.raises(FileNotFoundError):
        await aioipc.sysv.SharedMemory.attach(key)
    with pytest.raises(FileNotFoundError):
        await aioipc.sysv.Semaphore.open(key)
