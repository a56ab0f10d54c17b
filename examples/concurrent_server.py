"""A concurrent server: every connection gets its own handler task.

The classic iterative server answers one client at a time; "a
production-grade server would be concurrent". Here each request takes
0.2 s of (simulated) work, 50 clients connect at once, and all are served
in about 0.2 s per batch of ``max_connections``, not 50 times 0.2 s.

    python examples/concurrent_server.py [clients] [max_connections]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

import aioipc

live = peak = 0


async def slow_upper(msgs: aioipc.MessageStream) -> None:
    global live, peak
    live += 1
    peak = max(peak, live)
    try:
        async for request in msgs:
            await asyncio.sleep(0.2)  # stands for a database query, a computation ...
            await msgs.send(request.upper())
    finally:
        live -= 1


async def client(address: str, i: int) -> bytes:
    async with await aioipc.connect(address) as msgs:
        await msgs.send(b"client %d" % i)
        return await msgs.receive()


async def main(clients: int, limit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix:{tmp}/concurrent.sock"
        async with await aioipc.serve(address, slow_upper, max_connections=limit):
            start = time.perf_counter()
            replies = await asyncio.wait_for(
                asyncio.gather(*(client(address, i) for i in range(clients))), 60
            )
            elapsed = time.perf_counter() - start
            assert replies == [b"CLIENT %d" % i for i in range(clients)]
            print(f"{clients} clients served in {elapsed:.2f} s (one at a time: {clients * 0.2:.1f} s)")
            print(f"handlers running at once: at most {peak} (max_connections={limit})")


if __name__ == "__main__":
    args = [int(arg) for arg in sys.argv[1:3]]
    aioipc.run(main(*(args + [50, 25][len(args) :])), exit_quietly=True)
