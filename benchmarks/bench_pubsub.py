"""Publish / subscribe: fan-out to N subscriber processes against aioipc's one-to-one unix stream.

- ``pubsub-4`` / ``pubsub-1``: ``aioipc.pubsub.publisher("unix:@...", policy="block")`` in one
  process, 4 (or 1) subscriber processes on ``bench.>``; every subscriber gets every message.
  The clock runs from the first publish until every subscriber has had the last message; the
  result is messages per second *per subscriber*. Nothing is dropped (``policy="block"``), so
  this is the rate the slowest subscriber keeps up with. Processes are not pinned (five
  processes, few CPUs).
- ``aioipc-unix``: ``bench_sockets.py``'s framed unix stream, one sender and one receiver, the
  baseline, measured in the same run.

Workload: one way throughput of 64 B messages (msgs/s). With fewer than five CPUs the four
subscribers and the publisher share them, and every subscriber spends about what the stream's one
receiver does per message: the fan-out then measures CPU per message more than the pipeline, and
0.5x is out of reach on two CPUs. Example::

    python benchmarks/bench_pubsub.py --quick --loop uvloop
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import _harness as h
import bench_sockets

SCRIPT = os.path.abspath(__file__)
ADDRESS_VARIABLE = "AIOIPC_BENCH_PUBSUB_ADDRESS"
FANOUT = {"pubsub-4": 4, "pubsub-1": 1}
LABELS = {
    "pubsub-4": "aioipc pubsub, unix, 4 subscribers",
    "pubsub-1": "aioipc pubsub, unix, 1 subscriber",
    "aioipc-unix": bench_sockets.LABELS["aioipc-unix"],
}


def _subscriber_command(a: h.RoleArgs) -> list[str]:
    return [
        *(sys.executable, SCRIPT, h.ROLE_FLAG, "subscribe", "--transport", "pubsub"),
        *("--loop", a.loop, "--size", str(a.size), "--count", str(a.count), "--fds", "1"),
    ]


async def subscribe(a: h.RoleArgs) -> dict[str, float]:
    """Take ``a.count`` messages, then write one byte to stdout (the ``--fds`` number)."""
    import aioipc.pubsub

    async with await aioipc.pubsub.subscribe(os.environ[ADDRESS_VARIABLE], "bench.>") as sub:
        os.write(a.fds[0], b"s")
        receive = sub.receive
        for _ in range(a.count):
            _, payload = await receive()
        assert len(payload) == a.size
        os.write(a.fds[0], b"d")
    return {}


def _publish_role(subscribers: int) -> h.Role:
    async def publish(a: h.RoleArgs) -> dict[str, float]:
        import aioipc.pubsub

        address = f"unix:@aioipc-bench-pubsub-{os.getpid()}"
        env = {**os.environ, ADDRESS_VARIABLE: address}
        async with await aioipc.pubsub.publisher(address, policy="block") as pub:
            children = [
                await asyncio.create_subprocess_exec(*_subscriber_command(a), env=env, stdout=subprocess.PIPE)
                for _ in range(subscribers)
            ]
            for child in children:
                assert child.stdout is not None
                assert await child.stdout.readexactly(1) == b"s"
            payload = b"x" * a.size
            with h.Stopwatch(None) as watch:
                for _ in range(a.count):
                    await pub.publish("bench.data", payload)
                for child in children:
                    assert child.stdout is not None
                    assert await child.stdout.readexactly(1) == b"d"
            for child in children:
                assert await child.wait() == 0
        return watch.result(a.count, a.size)

    return h.async_role(publish)


ROLES: dict[tuple[str, str], h.Role] = {
    **h.roles("pubsub", subscribe=subscribe),
    **{("publish", name): _publish_role(n) for name, n in FANOUT.items()},
}


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: a publisher that starts its subscribers, or bench_sockets' stream pair."""
    if contender.transport not in FANOUT:
        return bench_sockets.measure(contender, workload, cpus)
    argv = h.role_command(SCRIPT, "publish", contender, workload, (1,), -1)
    return h.run_alone(argv, dict(os.environ))


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratio issue 13 names, for every loop measured."""
    tput = h.Workload("throughput", 64)
    wanted: list[h.TargetSpec] = [
        (f"pubsub 4 subscribers/unix stream 64 B msgs/s each, {loop}", f"pubsub-4@{loop}",
         f"aioipc-unix@{loop}", tput, "msgs_per_s", ">=", 0.5)
        for loop in h.LOOPS
    ]  # fmt: skip
    return h.targets(contenders, wanted)


def main(argv: list[str] | None = None) -> bool:
    """Run the pubsub benchmark, print the table and the ratios; True when every target is met."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    contenders = h.pick_contenders(args, LABELS)
    workloads = h.make_workloads(args, [64], h.stream_count(300_000), latency_sizes=())
    return h.report("pubsub", measure, contenders, workloads, args.runs, targets_for(contenders))


if __name__ == "__main__":
    h.script_main(ROLES, main)
