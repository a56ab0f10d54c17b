"""Several processes adding to one counter in shared memory, under a lock.

Four worker processes each add 1 to a 64-bit counter 500 times; a POSIX
named semaphore with one unit serialises the read-modify-write, so no
update is lost and the total is exactly 2000.

    python examples/counter_processes.py
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from contextlib import aclosing

import aioipc
from aioipc.shm import SharedMemory
from aioipc.sync import Semaphore

WORKERS = 4
ROUNDS = 500
COUNTER = struct.Struct("<q")


async def worker(name: str) -> None:
    async with await SharedMemory.attach(name) as shm, aclosing(await Semaphore.open(name)) as lock:
        for _ in range(ROUNDS):
            async with lock:  # acquire ... release
                (value,) = COUNTER.unpack_from(shm.buf)
                COUNTER.pack_into(shm.buf, 0, value + 1)


async def main() -> None:
    name = f"/aioipc-counter-{os.getpid()}"
    async with (
        await SharedMemory.create(name, COUNTER.size) as shm,
        aclosing(await Semaphore.open(name, create=True, initial=1)),
    ):
        workers = [
            await asyncio.create_subprocess_exec(sys.executable, __file__, name) for _ in range(WORKERS)
        ]
        codes = [await proc.wait() for proc in workers]
        (total,) = COUNTER.unpack_from(shm.buf)
        print(f"{WORKERS} workers exited with {codes}; counter = {total} (expected {WORKERS * ROUNDS})")
        if total != WORKERS * ROUNDS:
            raise SystemExit("lost updates")


if __name__ == "__main__":
    aioipc.run(worker(sys.argv[1]) if len(sys.argv) == 2 else main(), exit_quietly=True)
