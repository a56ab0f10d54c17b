"""Request/response between two processes over a shared-memory ring.

The parent serves ``shm:/name`` (creating the ring), a child attaches with
``aioipc.connect()`` and answers each request; the parent sends a burst in
one batch, then a few round trips, then closes: the child's ``async for``
ends and the ring's files are gone.

    python examples/shm_ring_echo.py
"""

from __future__ import annotations

import asyncio
import os
import sys

import aioipc
from aioipc.shm import Ring


async def child(address: str) -> None:
    async with await aioipc.connect(address) as ring:
        async for request in ring:
            await ring.send(b"echo: " + request)


async def parent() -> None:
    address = f"shm:/aioipc-echo-{os.getpid()}"
    finished = asyncio.Event()

    async def handler(ring: Ring) -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, __file__, address)
        await ring.send_many([b"burst %d" % i for i in range(1000)])
        answers = 0
        while answers < 1000:
            answers += len(await ring.receive_many())
        print("1000 batched requests answered")
        for word in (b"ping", b"hello"):
            await ring.send(word)
            async with ring.receive_view() as view:  # zero-copy: a view into shared memory
                print(bytes(view).decode())
        await ring.send_eof()
        print("child exited with", await proc.wait())
        finished.set()

    async with await aioipc.serve(address, handler):
        await finished.wait()


if __name__ == "__main__":
    aioipc.run(child(sys.argv[1]) if len(sys.argv) == 2 else parent(), exit_quietly=True)
