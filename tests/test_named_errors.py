"""Every error for a missing or an existing named object names it, keeps its errno, and
(for one that exists) says how to remove it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioipc.fifo
import aioipc.mq
import aioipc.shm
import aioipc.sync
import aioipc.sysv
from aioipc.cli._inventory import remove

Opener = Callable[[], Awaitable[Any]]


async def _missing(call: Opener, shown: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        await call()
    assert info.value.errno == errno.ENOENT
    assert shown in str(info.value)


async def _exists(create: Callable[..., Awaitable[Any]], shown: str, cleanup: str) -> None:
    """Create (persisted), then again: the error names the object and an ``aioipc rm`` command that works."""
    await (await create(persist=True)).aclose()  # left behind, as a crashed program would leave it
    try:
        with pytest.raises(FileExistsError) as info:
            await create()
        assert info.value.errno == errno.EEXIST
        assert shown in str(info.value)
        command = re.search(r"`aioipc rm ([^`]+)`", str(info.value))
        assert command is not None, str(info.value)
        assert command[1] == cleanup
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aioipc", "rm", command[1], stderr=asyncio.subprocess.PIPE
        )
        with anyio.fail_after(30):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    finally:
        with contextlib.suppress(FileNotFoundError):  # a failed check leaves nothing behind either
            remove(cleanup)
    await (await create()).aclose()  # the name is free again


async def test_fifo(tmp_ipc_dir: Path) -> None:
    path = str(tmp_ipc_dir / "named.fifo")
    await _missing(lambda: aioipc.fifo.open_reader(path), path)
    await _missing(lambda: aioipc.fifo.open_writer(path, wait_for_reader=False), path)
    await _exists(lambda **kw: aioipc.fifo.create(path, **kw), path, f"fifo:{path}")


async def test_posix_queue(unique_name: str) -> None:
    name = "/" + unique_name
    await _missing(lambda: aioipc.mq.open(name), name)
    await _exists(
        lambda **kw: aioipc.mq.open(name, create=True, max_messages=1, max_message_size=64, **kw),
        name,
        f"mq:{name}",
    )
    with pytest.raises(FileNotFoundError, match=name) as info:
        aioipc.mq.unlink(name)
    assert info.value.errno == errno.ENOENT


async def test_posix_semaphore(unique_name: str) -> None:
    name = "/" + unique_name
    await _missing(lambda: aioipc.sync.Semaphore.open(name), name)
    await _exists(lambda **kw: aioipc.sync.Semaphore.open(name, create=True, **kw), name, f"sem:{name}")
    with pytest.raises(FileNotFoundError, match=name):
        aioipc.sync.unlink(name)


async def test_posix_segment_and_ring(unique_name: str) -> None:
    name = "/" + unique_name
    await _missing(lambda: aioipc.shm.SharedMemory.attach(name), name)
    await _exists(lambda **kw: aioipc.shm.SharedMemory.create(name, 64, **kw), name, f"shm:{name}")
    await _missing(lambda: aioipc.shm.Ring.attach(name), name)
    await _exists(lambda **kw: aioipc.shm.Ring.create(name, 8192, **kw), name, f"shm:{name}")


async def test_system_v_objects(tmp_path: Path) -> None:
    anchor = tmp_path / "ftok-anchor"
    anchor.write_bytes(b"")
    key = aioipc.sysv.ftok(anchor, 99)
    shown = f"{key & 0xFFFFFFFF:#010x}"
    queue = aioipc.sysv.MessageQueue
    await _missing(lambda: queue.open(key), shown)
    await _exists(lambda **kw: queue.open(key, create=True, **kw), shown, f"sysvmq:{shown}")
    segment = aioipc.sysv.SharedMemory
    await _missing(lambda: segment.attach(key), shown)
    await _exists(lambda **kw: segment.create(key, 64, **kw), shown, f"sysvshm:{shown}")
    semaphore = aioipc.sysv.Semaphore
    await _missing(lambda: semaphore.open(key), shown)
    await _exists(lambda **kw: semaphore.open(key, create=True, **kw), shown, f"sysvsem:{shown}")
