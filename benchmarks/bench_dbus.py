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
    rounds = h.RoundTrips(a.count)
    async with await aioipc.dbus.connect(os.environ[ADDRESS_VARIABLE]) as bus:
        h.wait_go(ready_fd)
        for _ in rounds:
            [reply] = await bus.call(NAME, PATH, INTERFACE, "Echo", "s", [payload])
    assert reply == payload
    return rounds.result()


async def dbus_fast_ping(a: h.RoleArgs) -> dict[str, float]:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    ready_fd, _ = a.fds
    payload = "x" * a.size
    rounds = h.RoundTrips(a.count)
    bus = await MessageBus(bus_address=os.environ[ADDRESS_VARIABLE]).connect()
    try:
        h.wait_go(ready_fd)
        for _ in rounds:
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
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()
    assert reply.body == [payload]
    return rounds.result()


ROLES: dict[tuple[str, str], h.Role] = {
    **h.roles("aioipc", echo=serve, ping=aioipc_ping),
    **h.roles("dbus-fast", echo=serve, ping=dbus_fast_ping),
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
    return h.run_sides(
        SCRIPT, contender, workload, cpus, ("ping", (ready_r, stop_w)), ("echo", (ready_w, stop_r))
    )


def main(argv: list[str] | None = None) -> bool:
    """Run the D-Bus benchmark, print the table and the ratio; True when the target is met."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    if shutil.which("dbus-daemon") is None:
        print("skipping D-Bus: dbus-daemon is not installed", file=sys.stderr)
        return True
    contenders = h.pick_contenders(args, LABELS)
    count = args.count or h.default_count(5_000, args.quick)
    workloads = [h.Workload("latency", size, count) for size in args.size or [64]]
    wanted: list[h.TargetSpec] = []
    for loop in args.loop:
        for w in workloads:
            name = f"aioipc/dbus-fast {w.size} B call RTT p50, {loop}"
            wanted.append((name, f"aioipc@{loop}", f"dbus-fast@{loop}", w, "p50_us", "<=", 1.1))
    with private_bus():
        return h.report(
            "D-Bus method call", measure, contenders, workloads, args.runs, h.targets(contenders, wanted)
        )


if __name__ == "__main__":
    h.script_main(ROLES, main)
