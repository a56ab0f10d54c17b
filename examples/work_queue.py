"""A work queue: one producer, several consumer processes, each with several async consumers.

The producer creates a POSIX job queue and a result queue, starts the
consumer processes (this script with ``--consumer``), sends the jobs and
one "exit" per async consumer, and checks that every job was done exactly
once. A full job queue makes the producer wait (backpressure)::

    python examples/work_queue.py
    python examples/work_queue.py --jobs 500 --processes 4 --tasks 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aioipc
import aioipc.mq

EXIT = b"exit"


async def consume(jobs_name: str, results_name: str) -> None:
    """One async consumer: its own handles on both queues, until it takes an "exit"."""
    async with (
        await aioipc.mq.open(jobs_name, write=False) as jobs,
        await aioipc.mq.open(results_name, read=False) as results,
    ):
        async for job in jobs:
            if job == EXIT:
                return
            n = int(job)
            await asyncio.sleep(0.002)  # stands for real asynchronous work
            await results.send(b"%d %d %d" % (os.getpid(), n, n * n))


async def consumer_process(jobs_name: str, results_name: str, tasks: int) -> None:
    async with asyncio.TaskGroup() as tg:
        for _ in range(tasks):
            tg.create_task(consume(jobs_name, results_name))


async def producer(jobs: int, processes: int, tasks: int) -> None:
    base = f"/aioipc-work-{os.getpid()}"
    async with (
        await aioipc.mq.open(base + "-jobs", create=True, max_messages=10, max_message_size=64) as job_queue,
        await aioipc.mq.open(base + "-results", create=True, max_messages=10, max_message_size=64) as results,
    ):
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--consumer", base, "--tasks", str(tasks)
            )
            for _ in range(processes)
        ]

        async def send_jobs() -> None:
            for n in range(jobs):
                await job_queue.send(b"%d" % n)
            for _ in range(processes * tasks):
                await job_queue.send(EXIT)

        done: dict[int, int] = {}
        workers: set[int] = set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(send_jobs())
            while len(done) < jobs:
                pid, n, square = map(int, (await results.receive()).split())
                assert n not in done, f"job {n} done twice"
                done[n] = square
                workers.add(pid)
        codes = [await child.wait() for child in children]
    expected = sum(n * n for n in range(jobs))
    print(f"{len(done)} jobs done once each; consumer processes exited with {codes}")
    print(f"sum of squares = {sum(done.values())} (expected {expected})")
    print(f"{len(workers)} of {processes} processes took jobs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2, help="async consumers per process")
    parser.add_argument("--consumer", metavar="BASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        aioipc.run(
            consumer_process(args.consumer + "-jobs", args.consumer + "-results", args.tasks),
            exit_quietly=True,
        )
    else:
        aioipc.run(producer(args.jobs, args.processes, args.tasks), exit_quietly=True)
