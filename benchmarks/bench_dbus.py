"""D-Bus: a method-call round trip through aioipc.dbus against plain dbus-fast on the same loop.

A private ``dbus-daemon`` is started for the run. In every measurement the
peer process exports an ``Echo(s) -> s`` object with ``aioipc.dbus`` and
owns a name; the measuring process calls it ``--count`` times and keeps
the round-trip times:

- ``aioipc``: ``await bus.call(name, path, interface, "Echo", "s", [payload])``.
- ``dbus-fast``: ``await message_bus.call(Message(...))`` on a plain
  ``dbus_fast.aio.MessageBus``.

Both sides use the event loop named by ``--loop``. Example::

    python benchmarks/bench_dbus.py --loop uvloop --size 64 --runs 3
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import _harness as h

SCRIPT = os.path.abspath(__file__)
ADDRESS_VARIABLE = "AIOIPC_BENCH_DBUS_ADDRESS"
NAME = INTERFACE = "org.aioipc.Bench"
PATH = "/org/aioipc/Bench"
LABELS = {"aioipc": "aioipc.dbus Bus.call", "dbus-fast": "dbus-fast MessageBus.call"}


# ---------------------------------------------------------------- peer: the exported object


def _echo_object() -> Any:
    from aioipc.dbus import ServiceInterface, dbus_method

    class Echo(ServiceInterface):
        @dbus_method()
        def Echo(self, text: "s") -> "s":  # noqa: F821, UP037 - D-Bus signatures for dbus-fast
            return text

    return Echo(INTERFACE)


async def serve(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.dbus

    ready_fd, stop_fd = a.fds
    async with await aioipc.dbus.connect(os.environ[ADDRESS_VARIABLE]) as bus:
        await bus.export(PATH, _echo_object())
        await bus.request_name(NAME)
        h.signal_go(ready_fd)
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        loop.add_reader(stop_fd, stopped.set_result, None)  # EOF: the measuring side is done
        try:
            await stopped
        finally:
            loop.remove_reader(stop_fd)
    return {}


# ---------------------------------------------------------------- measuring side


async def aioipc_ping(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.dbus

    ready_fd, _ = a.fds
    payload = "x" * a.size
    latencies = []
    clock = time.perf_counter
    async with await aioipc.dbus.connect(os.environ[ADDRESS_VARIABLE]) as bus:
        h.wait_go(ready_fd)
        for i in range(h.warmup_rounds(a.count) + a.count):
            start = clock()
            [reply] = await bus.call(NAME, PATH, INTERFACE, "Echo", "s", [payload])
            if i >= h.warmup_rounds(a.count):
                latencies.append(clock() - start)
    assert reply == payload
    return h.latency_result(latencies)


async def dbus_fast_ping(a: h.RoleArgs) -> dict[str, float]:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    ready_fd, _ = a.fds
    payload = "x" * a.size
    latencies = []
    clock = time.perf_counter
    bus = await MessageBus(bus_address=os.environ[ADDRESS_VARIABLE]).connect()
    try:
        h.wait_go(ready_fd)
        for i in range(h.warmup_rounds(a.count) + a.count):
            start = clock()
            reply = await bus.call(
                Message(
                    destination=NAME,
                    path=PATH,
                    interface=INTERFACE,
                    member="Echo",
                    signature="s",
                    body=[payload],
                )
            )
            if i >= h.warmup_rounds(a.count):
                latencies.append(clock() - start)
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()
    assert reply.body == [payload]
    return h.latency_result(latencies)


ROLES: dict[tuple[str, str], h.Role] = {
    ("echo", "aioipc"): lambda a: h.run_async(serve(a), a.loop),
    ("echo", "dbus-fast"): lambda a: h.run_async(serve(a), a.loop),
    ("ping", "aioipc"): lambda a: h.run_async(aioipc_ping(a), a.loop),
    ("ping", "dbus-fast"): lambda a: h.run_async(dbus_fast_ping(a), a.loop),
}


# ---------------------------------------------------------------- driving


@contextmanager
def private_bus() -> Iterator[str]:
    """A private ``dbus-daemon --session`` for the whole run; its address is in the environment."""
    with tempfile.TemporaryDirectory(prefix="aioipc-bench-") as directory:
        daemon = subprocess.Popen(
            ["dbus-daemon", "--session", f"--address=unix:path={directory}/bus", "--print-address=1",
             "--nofork", "--nopidfile"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert daemon.stdout is not None
            address = daemon.stdout.readline().strip()
            daemon.stdout.close()
            if not address:
                raise RuntimeError("dbus-daemon did not start")
            os.environ[ADDRESS_VARIABLE] = address
            yield address
        finally:
            os.environ.pop(ADDRESS_VARIABLE, None)
            daemon.terminate()
            daemon.wait(timeout=10)


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: a fresh service process on ``cpus[1]``, the caller on ``cpus[0]``."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()  # the service stops at EOF, when the measuring side exits
    measure_fds, peer_fds = (ready_r, stop_w), (ready_w, stop_r)
    measure_argv = h.role_command(SCRIPT, "ping", contender, workload, measure_fds, cpus[0])
    peer_argv = h.role_command(SCRIPT, "echo", contender, workload, peer_fds, cpus[1])
    return h.run_pair(measure_argv, peer_argv, measure_fds=measure_fds, peer_fds=peer_fds)


def main(argv: list[str] | None = None) -> bool:
    """Run the D-Bus benchmark, print the table and the ratio; True when the target is met."""
    args = h.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    if shutil.which("dbus-daemon") is None:
        print("skipping D-Bus: dbus-daemon is not installed", file=sys.stderr)
        return True
    chosen = args.transport or list(LABELS)
    unknown = set(chosen) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown transport(s) {sorted(unknown)}; choose from {sorted(LABELS)}")
    contenders = [h.Contender(t, LABELS[t], loop) for t in chosen for loop in args.loop]
    count = args.count or (1_000 if args.quick else 5_000)
    workloads = [h.Workload("latency", size, count) for size in args.size or [64]]
    runs = args.runs or (3 if args.quick else 5)
    with private_bus():
        results = h.collect(measure, contenders, workloads, runs)
    h.print_table("D-Bus method call", results, contenders, workloads, runs)
    by_key = {c.key: c for c in contenders}
    targets = [
        h.Target(f"aioipc/dbus-fast {w.size} B call RTT p50, {loop}", ours, theirs, w, "p50_us", "<=", 1.1)
        for loop in args.loop
        if (ours := by_key.get(f"aioipc@{loop}")) and (theirs := by_key.get(f"dbus-fast@{loop}"))
        for w in workloads
    ]
    return h.print_targets(results, targets)


if __name__ == "__main__":
    if h.ROLE_FLAG in sys.argv:
        h.role_main(ROLES)
    main()
