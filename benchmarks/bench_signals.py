"""Signals and spawn channels: aioipc against a bare add_signal_handler and a unix socket.

Two side-by-side measurements, each between two processes:

- signal ping-pong: each side sends SIGUSR1 to the other (``os.kill``) and
  waits for the answer; a round trip is two deliveries, each from ``kill``
  to the awaiting task resuming. Contenders: ``aioipc``
  (``aioipc.signals.receive``) and ``bare`` (``loop.add_signal_handler``
  setting an ``asyncio.Event``), on the same loop kind on both sides.
- channel round trips of 64 B messages: ``spawn`` (the measuring side
  starts its peer with ``aioipc.process.spawn`` and talks over
  ``proc.channel``) against ``unix`` (aioipc's framed unix stream sockets
  over a socketpair the harness hands to both sides).

Example::

    python benchmarks/bench_signals.py --loop uvloop --runs 3
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Any

import _harness as h

SCRIPT = os.path.abspath(__file__)
CHILD_FLAG = "--spawned-echo"
PEER_CPU_ENV = "BENCH_PEER_CPU"
SIGNAL_SIZE = 0  # a signal carries no payload


# ---------------------------------------------------------------- signal ping-pong


def _exchange_pids(read_fd: int, write_fd: int, *, first: bool) -> int:
    """Swap pids over two pipes (each side has subscribed before it writes)."""
    if first:
        os.write(write_fd, str(os.getpid()).encode())
        return int(os.read(read_fd, 32))
    peer = int(os.read(read_fd, 32))
    os.write(write_fd, str(os.getpid()).encode())
    return peer


async def aioipc_ping(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.signals

    write_fd, read_fd = a.fds
    rounds = h.RoundTrips(a.count)
    async with aioipc.signals.receive(signal.SIGUSR1) as sigs:
        peer = _exchange_pids(read_fd, write_fd, first=True)
        for _ in rounds:
            os.kill(peer, signal.SIGUSR1)
            await sigs.receive()
    return rounds.result()


async def aioipc_echo(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.signals

    read_fd, write_fd = a.fds
    async with aioipc.signals.receive(signal.SIGUSR1) as sigs:
        peer = _exchange_pids(read_fd, write_fd, first=False)
        for _ in range(h.warmup_rounds(a.count) + a.count):
            await sigs.receive()
            os.kill(peer, signal.SIGUSR1)
    return {}


def _bare_signal() -> asyncio.Event:
    """An event that SIGUSR1 sets (``add_signal_handler``)."""
    event = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, event.set)
    return event


async def bare_ping(a: h.RoleArgs) -> dict[str, float]:
    write_fd, read_fd = a.fds
    event = _bare_signal()
    peer = _exchange_pids(read_fd, write_fd, first=True)
    rounds = h.RoundTrips(a.count)
    for _ in rounds:
        os.kill(peer, signal.SIGUSR1)
        await event.wait()
        event.clear()
    asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
    return rounds.result()


async def bare_echo(a: h.RoleArgs) -> dict[str, float]:
    read_fd, write_fd = a.fds
    event = _bare_signal()
    peer = _exchange_pids(read_fd, write_fd, first=False)
    for _ in range(h.warmup_rounds(a.count) + a.count):
        await event.wait()
        event.clear()
        os.kill(peer, signal.SIGUSR1)
    asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
    return {}


# ---------------------------------------------------------------- channel round trips


async def spawn_ping(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.process

    argv = [sys.executable, SCRIPT, CHILD_FLAG, a.loop, os.environ.get(PEER_CPU_ENV, "-1")]
    async with await aioipc.process.spawn(argv, max_size=a.size) as proc:
        channel = proc.channel
        assert channel is not None
        result = await h.ping_messages(channel.send, channel.receive, a)
        await channel.send_eof()
        assert await proc.wait() == 0
    return result


async def spawned_echo() -> None:
    import aioipc.process

    async with await aioipc.process.parent_channel() as channel:
        await h.echo_messages(channel, channel.send)


def _unix_channel(fd: int, size: int) -> Any:
    import aioipc
    import aioipc.sockets

    return aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=fd)), size)


async def unix_ping(a: h.RoleArgs) -> dict[str, float]:
    (fd,) = a.fds
    async with _unix_channel(fd, a.size) as channel:
        return await h.ping_messages(channel.send, channel.receive, a)


async def unix_echo(a: h.RoleArgs) -> dict[str, float]:
    (fd,) = a.fds
    async with _unix_channel(fd, a.size) as channel:
        return await h.echo_messages(channel, channel.send)


# ---------------------------------------------------------------- wiring


ROLES: dict[tuple[str, str], h.Role] = {
    **h.roles("aioipc", ping=aioipc_ping, echo=aioipc_echo),
    **h.roles("bare", ping=bare_ping, echo=bare_echo),
    **h.roles("spawn", ping=spawn_ping),
    **h.roles("unix", ping=unix_ping, echo=unix_echo),
}

LABELS = {
    "aioipc": "aioipc.signals.receive",
    "bare": "add_signal_handler + Event",
    "spawn": "aioipc spawn channel",
    "unix": "aioipc unix socketpair, framed",
}
SIGNAL_TRANSPORTS = ("aioipc", "bare")
CHANNEL_TRANSPORTS = ("spawn", "unix")


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: the measuring side on ``cpus[0]``, its peer on ``cpus[1]``."""
    if contender.transport == "spawn":
        # The measuring side starts its own peer: the harness starts only one process.
        argv = h.role_command(SCRIPT, "ping", contender, workload, [0], cpus[0])
        return h.run_alone(argv, env={**os.environ, PEER_CPU_ENV: str(cpus[1])})
    if contender.transport == "unix":
        a, b = socket.socketpair()
        measure_fds, peer_fds = (a.detach(),), (b.detach(),)
    else:
        to_peer_r, to_peer_w = os.pipe()
        from_peer_r, from_peer_w = os.pipe()
        measure_fds, peer_fds = (to_peer_w, from_peer_r), (to_peer_r, from_peer_w)
    return h.run_sides(SCRIPT, contender, workload, cpus, ("ping", measure_fds), ("echo", peer_fds))


def targets_for(contenders: list[h.Contender], signals: h.Workload, channel: h.Workload) -> list[h.Target]:
    """The ratios issue 4 names, for every loop measured."""
    wanted: list[h.TargetSpec] = []
    for loop in h.LOOPS:
        name = f"aioipc/bare signal RTT p50, {loop}"
        wanted.append((name, f"aioipc@{loop}", f"bare@{loop}", signals, "p50_us", "<=", 1.1))
        name = f"spawn/unix 64 B RTT p50, {loop}"
        wanted.append((name, f"spawn@{loop}", f"unix@{loop}", channel, "p50_us", "<=", 1.15))
    return h.targets(contenders, wanted)


def main(argv: list[str] | None = None) -> bool:
    """Run both measurements, print the tables and the ratios; True when every target is met."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    contenders = h.pick_contenders(args, LABELS)
    signal_workload = h.Workload("latency", SIGNAL_SIZE, args.count or h.default_count(5_000, args.quick))
    size = (args.size or [64])[0]
    channel_workload = h.Workload("latency", size, args.count or h.default_count(10_000, args.quick))
    signal_contenders = [c for c in contenders if c.transport in SIGNAL_TRANSPORTS]
    channel_contenders = [c for c in contenders if c.transport in CHANNEL_TRANSPORTS]
    results = h.Results()
    for group, workload in ((signal_contenders, signal_workload), (channel_contenders, channel_workload)):
        if group:
            measured = h.collect(measure, group, [workload], args.runs)
            results.samples.update(measured.samples)
            title = "signal ping-pong (RTT = two deliveries)" if workload is signal_workload else "channel"
            h.print_table(title, results, group, [workload], args.runs)
    return h.print_targets(results, targets_for(contenders, signal_workload, channel_workload))


if __name__ == "__main__":
    if CHILD_FLAG in sys.argv:
        loop_name, cpu = sys.argv[2], int(sys.argv[3])
        if cpu >= 0:
            os.sched_setaffinity(0, {cpu})
        h.run_async(spawned_echo(), loop_name)
        sys.exit(0)
    h.script_main(ROLES, main)
