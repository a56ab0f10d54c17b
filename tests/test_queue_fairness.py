"""Message queues under a flood: a receive (send) loop on a queue another process keeps full
(empty) still leaves other tasks their turns, on both queue kinds and both directions."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import posix_ipc
import pytest
import sysv_ipc
from helpers import assert_fair

import aioipc.mq
import aioipc.sysv
from aioipc.testing import measure_fairness

# A blocking peer in another process: it floods the queue, or drains it, until killed.
PEER = """
import sys
kind, role, name = sys.argv[1:]
if kind == "posix":
    import posix_ipc
    q = posix_ipc.MessageQueue(name)
else:
    import sysv_ipc
    q = sysv_ipc.MessageQueue(int(name))
sys.stdout.write("ready\\n")
sys.stdout.flush()
while True:
    if role == "flood":
        q.send(b"flood")
    else:
        q.receive()
"""


@asynccontextmanager
async def peer(kind: str, role: str, name: str) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEER, kind, role, name, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(10):
            assert await proc.stdout.readline() == b"ready\n"
        yield
    finally:
        proc.kill()
        await proc.wait()


async def check(kind: str, role: str, name: str, operation: Callable[[], Awaitable[object]]) -> None:
    async with peer(kind, role, name):
        with anyio.fail_after(10):
            seen = await measure_fairness(operation)
    assert_fair(seen, f"a {kind} queue's {'flood' if role == 'flood' else 'drain'}")


@pytest.mark.parametrize("role", ["flood", "drain"])
async def test_a_posix_queue_leaves_a_ticker_its_turns(unique_name: str, role: str) -> None:
    name = "/" + unique_name
    async with await aioipc.mq.open(name, create=True, max_messages=10, max_message_size=64) as q:
        operation = q.receive if role == "flood" else lambda: q.send(b"drained")
        await check("posix", role, name, operation)
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.unlink_message_queue(name)


@pytest.mark.parametrize("role", ["flood", "drain"])
async def test_a_sysv_queue_leaves_a_ticker_its_turns(role: str) -> None:
    created = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, 0o600)
    try:
        async with await aioipc.sysv.MessageQueue.open(created.key) as q:
            operation = q.receive if role == "flood" else lambda: q.send(b"drained")
            await check("sysv", role, str(created.key), operation)
    finally:
        created.remove()
