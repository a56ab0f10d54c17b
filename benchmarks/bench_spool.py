"""Spool: messages/s through a ``spool:`` directory with one consumer, against a POSIX queue.

For information, no target: a spool trades speed for durability (a file
per message, renamed twice and deleted). Both sides are separate
processes; the harness makes the spool (in a temporary directory) or the
queue:

- ``spool``: ``aioipc.connect("spool:DIR", sync=False)`` to a consumer
  (``SpoolReader``): no fsync, survives a crash of either process.
- ``spool-fsync``: the default ``sync=True``: fsync of each message and of
  ``new/``, survives a crash of the machine. Measured over at most 200
  messages (the disk's fsync time decides it).
- ``mq``: ``aioipc.mq`` (a POSIX queue, 10 messages deep), the baseline.

The spool lives in the temporary directory (``TMPDIR``): the file system
there decides the numbers (creating a file costs from tens of µs on tmpfs
to milliseconds on a slow disk); ``TMPDIR=/dev/shm`` measures the code.

Example::

    python benchmarks/bench_spool.py --quick
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import shutil
import tempfile

import _harness as h
import posix_ipc

SCRIPT = os.path.abspath(__file__)
ENV = "AIOIPC_BENCH_SPOOL"  # the spool directory or the queue name
FSYNC_COUNT = 200


async def spool_send(a: h.RoleArgs, sync: bool) -> dict[str, float]:
    import aioipc

    (go_fd,) = a.fds
    async with await aioipc.connect(f"spool:{os.environ[ENV]}", sync=sync) as msgs:
        return await h.send_messages(msgs.send, a, go_fd)


async def spool_recv(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.spool import SpoolReader

    (go_fd,) = a.fds
    reader = SpoolReader(os.environ[ENV])
    try:
        return await h.receive_messages(reader.receive, a, go_fd)
    finally:
        await reader.aclose()


async def mq_send(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.mq

    (go_fd,) = a.fds
    async with await aioipc.mq.open(os.environ[ENV]) as queue:
        return await h.send_messages(queue.send, a, go_fd)


async def mq_recv(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.mq

    (go_fd,) = a.fds
    async with await aioipc.mq.open(os.environ[ENV]) as queue:
        return await h.receive_messages(queue.receive, a, go_fd)


async def spool_send_nosync(a: h.RoleArgs) -> dict[str, float]:
    return await spool_send(a, sync=False)


async def spool_send_fsync(a: h.RoleArgs) -> dict[str, float]:
    return await spool_send(a, sync=True)


LABELS = {
    "spool": "aioipc spool, sync=False",
    "spool-fsync": "aioipc spool, fsync (default)",
    "mq": "aioipc.mq (POSIX queue)",
}
ROLES = {
    **h.roles("spool", send=spool_send_nosync, recv=spool_recv),
    **h.roles("spool-fsync", send=spool_send_fsync, recv=spool_recv),
    **h.roles("mq", send=mq_send, recv=mq_recv),
}


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: a fresh spool or queue, the consumer (measuring side) on ``cpus[0]``."""
    go_r, go_w = os.pipe()
    if contender.transport == "mq":
        name = f"/aioipc-bench-{os.getpid()}-{random.getrandbits(32):x}"
        queue = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, 0o600, 10, workload.size)
        os.environ[ENV] = name
        try:
            return h.run_sides(SCRIPT, contender, workload, cpus, ("recv", (go_w,)), ("send", (go_r,)))
        finally:
            queue.unlink()
            queue.close()
    import aioipc.spool

    if contender.transport == "spool-fsync":
        workload = dataclasses.replace(workload, count=min(workload.count, FSYNC_COUNT))
    directory = tempfile.mkdtemp(prefix="aioipc-bench-")
    try:
        asyncio.run(aioipc.spool.create(directory))
        os.environ[ENV] = directory
        return h.run_sides(SCRIPT, contender, workload, cpus, ("recv", (go_w,)), ("send", (go_r,)))
    finally:
        shutil.rmtree(directory)


def main(argv: list[str] | None = None) -> bool:
    """Measure, print the table and the spool/queue ratios (for information: always met)."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    contenders = h.pick_contenders(args, LABELS)
    workloads = h.make_workloads(args, [64], lambda size: 20_000, latency_sizes=())
    wanted: list[h.TargetSpec] = []
    for loop in args.loop:
        for spool in ("spool", "spool-fsync"):
            name = f"{spool}/mq 64 B msgs/s, {loop} (information)"
            wanted.append((name, f"{spool}@{loop}", f"mq@{loop}", workloads[0], "msgs_per_s", ">=", 0.0))
    return h.report("spool", measure, contenders, workloads, args.runs, h.targets(contenders, wanted))


if __name__ == "__main__":
    h.script_main(ROLES, main)
