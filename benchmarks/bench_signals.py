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
import json
import os
import signal
import socket
import subprocess
import sys
import time

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
    latencies = []
    clock = time.perf_counter
    async with aioipc.signals.receive(signal.SIGUSR1) as sigs:
        peer = _exchange_pids(read_fd, write_fd, first=True)
        for i in range(h.warmup_rounds(a.count) + a.count):
            start = clock()
            os.kill(peer, signal.SIGUSR1)
            await sigs.receive()
            if i >= h.warmup_rounds(a.count):
                latencies.append(clock() - start)
    return h.latency_result(latencies)


async def aioipc_echo(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.signals

    read_fd, write_fd = a.fds
    async with aioipc.signals.receive(signal.SIGUSR1) as sigs:
        peer = _exchange_pids(read_fd, write_fd, first=False)
        for _ in range(h.warmup_rounds(a.count) + a.count):
            await sigs.receive()
            os.kill(peer, signal.SIGUSR1)
    return {}


async def bare_ping(a: h.RoleArgs) -> dict[str, float]:
    write_fd, read_fd = a.fds
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, event.set)
    peer = _exchange_pids(read_fd, write_fd, first=True)
    latencies = []
    clock = time.perf_counter
    for i in range(h.warmup_rounds(a.count) + a.count):
        start = clock()
        os.kill(peer, signal.SIGUSR1)
        await event.wait()
        event.clear()
        if i >= h.warmup_rounds(a.count):
            latencies.append(clock() - start)
    loop.remove_signal_handler(signal.SIGUSR1)
    return h.latency_result(latencies)


async def bare_echo(a: h.RoleArgs) -> dict[str, float]:
    read_fd, write_fd = a.fds
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, event.set)
    peer = _exchange_pids(read_fd, write_fd, first=False)
    for _ in range(h.warmup_rounds(a.count) + a.count):
        await event.wait()
        event.clear()
        os.kill(peer, signal.SIGUSR1)
    loop.remove_signal_handler(signal.SIGUSR1)
    return {}


# ---------------------------------------------------------------- channel round trips


async def _ping_over(channel: object, a: h.RoleArgs) -> dict[str, float]:
    payload = b"x" * a.size
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    send, receive = channel.send, channel.receive  # type: ignore[attr-defined]
    for i in range(warmup + a.count):
        start = clock()
        await send(payload)
        await receive()
        if i >= warmup:
            latencies.append(clock() - start)
    return h.latency_result(latencies)


async def spawn_ping(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.process

    argv = [sys.executable, SCRIPT, CHILD_FLAG, a.loop, os.environ.get(PEER_CPU_ENV, "-1")]
    async with await aioipc.process.spawn(argv, max_size=a.size) as proc:
        assert proc.channel is not None
        result = await _ping_over(proc.channel, a)
        await proc.channel.send_eof()
        assert await proc.wait() == 0
    return result


async def spawned_echo() -> None:
    import aioipc.process

    async with await aioipc.process.parent_channel() as channel:
        async for message in channel:
            await channel.send(message)


async def unix_ping(a: h.RoleArgs) -> dict[str, float]:
    import aioipc
    import aioipc.sockets

    (fd,) = a.fds
    async with aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=fd)), a.size) as channel:
        return await _ping_over(channel, a)


async def unix_echo(a: h.RoleArgs) -> dict[str, float]:
    import aioipc
    import aioipc.sockets

    (fd,) = a.fds
    async with aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=fd)), a.size) as channel:
        async for message in channel:
            await channel.send(message)
    return {}


# ---------------------------------------------------------------- wiring


def _async_role(function: object) -> h.Role:
    def role(a: h.RoleArgs) -> dict[str, float]:
        return h.run_async(function(a), a.loop)  # type: ignore[operator]

    return role


ROLES: dict[tuple[str, str], h.Role] = {
    ("ping", "aioipc"): _async_role(aioipc_ping),
    ("echo", "aioipc"): _async_role(aioipc_echo),
    ("ping", "bare"): _async_role(bare_ping),
    ("echo", "bare"): _async_role(bare_echo),
    ("ping", "spawn"): _async_role(spawn_ping),
    ("ping", "unix"): _async_role(unix_ping),
    ("echo", "unix"): _async_role(unix_echo),
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
        env = {**os.environ, PEER_CPU_ENV: str(cpus[1])}
        proc = subprocess.run(argv, capture_output=True, env=env, timeout=h.PAIR_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr.decode()}")
        result: dict[str, float] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        return result
    if contender.transport == "unix":
        a, b = socket.socketpair()
        measure_fds, peer_fds = (a.detach(),), (b.detach(),)
    else:
        to_peer_r, to_peer_w = os.pipe()
        from_peer_r, from_peer_w = os.pipe()
        measure_fds, peer_fds = (to_peer_w, from_peer_r), (to_peer_r, from_peer_w)
    return h.run_pair(
        h.role_command(SCRIPT, "ping", contender, workload, measure_fds, cpus[0]),
        h.role_command(SCRIPT, "echo", contender, workload, peer_fds, cpus[1]),
        measure_fds=measure_fds,
        peer_fds=peer_fds,
    )


def contenders_for(transports: list[str] | None, loops: list[str]) -> list[h.Contender]:
    chosen = transports or list(LABELS)
    unknown = set(chosen) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown transport(s) {sorted(unknown)}; choose from {sorted(LABELS)}")
    return [h.Contender(t, LABELS[t], loop) for t in chosen for loop in loops]


def targets_for(contenders: list[h.Contender], signals: h.Workload, channel: h.Workload) -> list[h.Target]:
    """The ratios issue 4 names, for every loop measured."""
    by_key = {c.key: c for c in contenders}
    targets = []
    for loop in h.LOOPS:
        ours, bare = by_key.get(f"aioipc@{loop}"), by_key.get(f"bare@{loop}")
        if ours and bare:
            name = f"aioipc/bare signal RTT p50, {loop}"
            targets.append(h.Target(name, ours, bare, signals, "p50_us", "<=", 1.1))
        spawn, unix = by_key.get(f"spawn@{loop}"), by_key.get(f"unix@{loop}")
        if spawn and unix:
            name = f"spawn/unix 64 B RTT p50, {loop}"
            targets.append(h.Target(name, spawn, unix, channel, "p50_us", "<=", 1.15))
    return targets


def main(argv: list[str] | None = None) -> bool:
    """Run both measurements, print the tables and the ratios; True when every target is met."""
    args = h.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    contenders = contenders_for(args.transport, args.loop)
    runs = args.runs or (3 if args.quick else 5)
    scale = 5 if args.quick else 1
    signal_workload = h.Workload("latency", SIGNAL_SIZE, args.count or 5_000 // scale)
    size = (args.size or [64])[0]
    channel_workload = h.Workload("latency", size, args.count or 10_000 // scale)
    signal_contenders = [c for c in contenders if c.transport in SIGNAL_TRANSPORTS]
    channel_contenders = [c for c in contenders if c.transport in CHANNEL_TRANSPORTS]
    results = h.Results()
    for group, workload in ((signal_contenders, signal_workload), (channel_contenders, channel_workload)):
        if group:
            measured = h.collect(measure, group, [workload], runs)
            results.samples.update(measured.samples)
            title = "signal ping-pong (RTT = two deliveries)" if workload is signal_workload else "channel"
            h.print_table(title, results, group, [workload], runs)
    return h.print_targets(results, targets_for(contenders, signal_workload, channel_workload))


if __name__ == "__main__":
    if CHILD_FLAG in sys.argv:
        loop_name, cpu = sys.argv[2], int(sys.argv[3])
        if cpu >= 0:
            os.sched_setaffinity(0, {cpu})
        import aioipc

        aioipc.run(spawned_echo(), loop="uvloop" if loop_name == "uvloop" else "asyncio")
        sys.exit(0)
    if h.ROLE_FLAG in sys.argv:
        h.role_main(ROLES)
    main()
