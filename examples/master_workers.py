"""A master process with four workers, shut down gracefully and in parallel.

The "graceful shutdown of a multi-processing system" example, async. The
master starts its workers with a message channel each and hands out jobs.
On SIGTERM (or Ctrl-C) it stops taking work and terminates all workers at
once: each gets SIGTERM, finishes what it holds, says goodbye over its
channel and exits; one still running after the grace period gets SIGKILL.
No worker is left behind as a zombie. To finish by itself, this example
sends the master SIGTERM once the jobs are done.

    python examples/master_workers.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aioipc
import aioipc.process
import aioipc.signals
from aioipc.shutdown import graceful_shutdown


async def worker() -> None:
    channel = await aioipc.process.parent_channel()
    done = 0

    async def goodbye() -> None:
        await channel.send(f"worker {os.getpid()}: stopping after {done} jobs".encode())
        await channel.aclose()

    async with graceful_shutdown(timeout=5) as sd:
        sd.add_hook(goodbye)
        async for job in channel:
            await channel.send(b"squared " + str(int(job) ** 2).encode())
            done += 1


async def master() -> None:
    # Each worker in its own session: Ctrl-C in the terminal reaches only the
    # master, which then stops the workers itself (rather than all at once).
    argv = [sys.executable, __file__, "worker"]
    workers = [await aioipc.process.spawn(argv, start_new_session=True) for _ in range(4)]

    async def stop_workers() -> None:
        async def farewell(proc: aioipc.process.Process) -> None:
            assert proc.channel is not None
            async for message in proc.channel:
                print(message.decode())

        async with asyncio.TaskGroup() as tg:
            for proc in workers:
                tg.create_task(farewell(proc))
            statuses = await aioipc.process.terminate_all(workers, grace=5)
        print("workers exited with", statuses)
        for proc in workers:
            await proc.aclose()

    async with graceful_shutdown(timeout=10) as sd:
        sd.add_hook(stop_workers)
        for job in range(12):
            channel = workers[job % len(workers)].channel
            assert channel is not None
            await channel.send(str(job).encode())
            print(f"job {job}:", (await channel.receive()).decode())
        aioipc.signals.send(os.getpid(), signal.SIGTERM)  # as an operator's `kill <master pid>`
        await asyncio.Event().wait()
    assert sd.reason is not None
    print("master stopped by", signal.Signals(sd.reason).name)


if __name__ == "__main__":
    aioipc.run(worker() if sys.argv[1:] == ["worker"] else master(), exit_quietly=True)
