"""Pipes: aioipc against asyncio pipe streams, blocking os.pipe, and a C floor.

Every contender sends the same frames (4-byte big-endian length, then the
payload) between two processes over anonymous pipes:

- ``aioipc``: ``aioipc.framed(aioipc.pipes.from_fd(...))`` on each side.
- ``asyncio``: ``loop.connect_read_pipe`` / ``connect_write_pipe`` streams,
  ``readexactly`` framing, ``write`` + ``drain`` per message (the same loop
  kind on both sides).
- ``os``: blocking ``os.pipe`` ends in a ``BufferedReader`` / ``BufferedWriter``.
- ``c``: ``c/pipe_bench.c`` built with ``gcc -O2`` (skipped without gcc).

Workloads: one way throughput (64 B: msgs/s, 1 MiB: GB/s) and 64 B round
trips (p50, p99). Example::

    python benchmarks/bench_pipes.py --transport aioipc,asyncio --loop uvloop --size 64 --runs 3
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from struct import Struct

import _harness as h

HEADER = Struct(">I")
SCRIPT = os.path.abspath(__file__)
LATENCY_MAX_SIZE = 64 * 1024  # round trips are measured for sizes below this


# ---------------------------------------------------------------- aioipc


async def aioipc_send(a: h.RoleArgs) -> dict[str, float]:
    import aioipc
    import aioipc.pipes

    data_fd, go_fd = a.fds
    payload = b"x" * a.size
    async with aioipc.framed(aioipc.pipes.from_fd(data_fd, "w"), max_size=a.size) as tx:
        h.wait_go(go_fd)
        for _ in range(a.count):
            await tx.send(payload)
    return {}


async def aioipc_recv(a: h.RoleArgs) -> dict[str, float]:
    import aioipc
    import aioipc.pipes

    data_fd, go_fd = a.fds
    async with aioipc.framed(aioipc.pipes.from_fd(data_fd, "r"), max_size=a.size) as rx:
        start = time.perf_counter()
        h.signal_go(go_fd)
        for _ in range(a.count):
            message = await rx.receive()
        elapsed = time.perf_counter() - start
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


async def aioipc_ping(a: h.RoleArgs) -> dict[str, float]:
    import aioipc
    import aioipc.pipes

    out_fd, in_fd = a.fds
    payload = b"x" * a.size
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    async with (
        aioipc.framed(aioipc.pipes.from_fd(out_fd, "w"), max_size=a.size) as tx,
        aioipc.framed(aioipc.pipes.from_fd(in_fd, "r"), max_size=a.size) as rx,
    ):
        for i in range(warmup + a.count):
            start = clock()
            await tx.send(payload)
            await rx.receive()
            if i >= warmup:
                latencies.append(clock() - start)
    return h.latency_result(latencies)


async def aioipc_echo(a: h.RoleArgs) -> dict[str, float]:
    import aioipc
    import aioipc.pipes

    in_fd, out_fd = a.fds
    async with (
        aioipc.framed(aioipc.pipes.from_fd(in_fd, "r"), max_size=a.size) as rx,
        aioipc.framed(aioipc.pipes.from_fd(out_fd, "w"), max_size=a.size) as tx,
    ):
        async for message in rx:
            await tx.send(message)
    return {}


# ---------------------------------------------------------------- asyncio streams


class _WriteProtocol(asyncio.streams.FlowControlMixin):
    """The write-pipe protocol of the usual recipe, plus a way to wait until the pipe is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


async def _asyncio_reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = open(fd, "rb", buffering=0)  # noqa: SIM115 -- the transport owns and closes it
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


async def _asyncio_writer(fd: int) -> tuple[asyncio.StreamWriter, _WriteProtocol]:
    loop = asyncio.get_running_loop()
    pipe = open(fd, "wb", buffering=0)  # noqa: SIM115 -- the transport owns and closes it
    transport, protocol = await loop.connect_write_pipe(_WriteProtocol, pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop), protocol


async def _asyncio_close(writer: asyncio.StreamWriter, protocol: _WriteProtocol) -> None:
    writer.close()
    await protocol.closed


async def asyncio_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    writer, protocol = await _asyncio_writer(data_fd)
    frame = HEADER.pack(a.size) + b"x" * a.size
    h.wait_go(go_fd)
    for _ in range(a.count):
        writer.write(frame)
        await writer.drain()
    await _asyncio_close(writer, protocol)
    return {}


async def asyncio_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    reader = await _asyncio_reader(data_fd)
    unpack = HEADER.unpack
    start = time.perf_counter()
    h.signal_go(go_fd)
    for _ in range(a.count):
        (size,) = unpack(await reader.readexactly(4))
        message = await reader.readexactly(size)
    elapsed = time.perf_counter() - start
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


async def asyncio_ping(a: h.RoleArgs) -> dict[str, float]:
    out_fd, in_fd = a.fds
    writer, protocol = await _asyncio_writer(out_fd)
    reader = await _asyncio_reader(in_fd)
    frame = HEADER.pack(a.size) + b"x" * a.size
    unpack = HEADER.unpack
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    for i in range(warmup + a.count):
        start = clock()
        writer.write(frame)
        await writer.drain()
        (size,) = unpack(await reader.readexactly(4))
        await reader.readexactly(size)
        if i >= warmup:
            latencies.append(clock() - start)
    await _asyncio_close(writer, protocol)
    return h.latency_result(latencies)


async def asyncio_echo(a: h.RoleArgs) -> dict[str, float]:
    in_fd, out_fd = a.fds
    reader = await _asyncio_reader(in_fd)
    writer, protocol = await _asyncio_writer(out_fd)
    pack, unpack = HEADER.pack, HEADER.unpack
    while header := await _read_header(reader):
        (size,) = unpack(header)
        writer.write(pack(size) + await reader.readexactly(size))
        await writer.drain()
    await _asyncio_close(writer, protocol)
    return {}


async def _read_header(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return b""


# ---------------------------------------------------------------- blocking os.pipe


def os_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    payload = b"x" * a.size
    header = HEADER.pack(a.size)
    with open(data_fd, "wb", buffering=64 * 1024) as writer:
        h.wait_go(go_fd)
        for _ in range(a.count):
            writer.write(header)
            writer.write(payload)
    return {}


def os_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    unpack = HEADER.unpack
    with open(data_fd, "rb", buffering=64 * 1024) as reader:
        start = time.perf_counter()
        h.signal_go(go_fd)
        for _ in range(a.count):
            (size,) = unpack(reader.read(4))
            message = reader.read(size)
        elapsed = time.perf_counter() - start
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


def os_ping(a: h.RoleArgs) -> dict[str, float]:
    out_fd, in_fd = a.fds
    payload = b"x" * a.size
    header = HEADER.pack(a.size)
    unpack = HEADER.unpack
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    with open(out_fd, "wb", buffering=64 * 1024) as writer, open(in_fd, "rb", buffering=64 * 1024) as reader:
        for i in range(warmup + a.count):
            start = clock()
            writer.write(header)
            writer.write(payload)
            writer.flush()
            (size,) = unpack(reader.read(4))
            reader.read(size)
            if i >= warmup:
                latencies.append(clock() - start)
    return h.latency_result(latencies)


def os_echo(a: h.RoleArgs) -> dict[str, float]:
    in_fd, out_fd = a.fds
    unpack = HEADER.unpack
    with open(in_fd, "rb", buffering=64 * 1024) as reader, open(out_fd, "wb", buffering=64 * 1024) as writer:
        while header := reader.read(4):
            (size,) = unpack(header)
            writer.write(header)
            writer.write(reader.read(size))
            writer.flush()
    return {}


# ---------------------------------------------------------------- wiring


def _async_role(function: object) -> h.Role:
    def role(a: h.RoleArgs) -> dict[str, float]:
        return h.run_async(function(a), a.loop)  # type: ignore[operator]

    return role


ROLES: dict[tuple[str, str], h.Role] = {
    ("send", "aioipc"): _async_role(aioipc_send),
    ("recv", "aioipc"): _async_role(aioipc_recv),
    ("ping", "aioipc"): _async_role(aioipc_ping),
    ("echo", "aioipc"): _async_role(aioipc_echo),
    ("send", "asyncio"): _async_role(asyncio_send),
    ("recv", "asyncio"): _async_role(asyncio_recv),
    ("ping", "asyncio"): _async_role(asyncio_ping),
    ("echo", "asyncio"): _async_role(asyncio_echo),
    ("send", "os"): os_send,
    ("recv", "os"): os_recv,
    ("ping", "os"): os_ping,
    ("echo", "os"): os_echo,
}

LABELS = {
    "aioipc": "aioipc pipes",
    "asyncio": "asyncio connect_*_pipe + readexactly",
    "os": "os.pipe + BufferedReader (sync)",
    "c": "C (gcc -O2)",
}


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: fresh pipes, the measuring side on ``cpus[0]``, its peer on ``cpus[1]``."""
    data_r, data_w = os.pipe()
    back_r, back_w = os.pipe()  # the go byte (throughput) or the echoes (latency)
    if workload.kind == "throughput":
        measure_role, measure_fds = "recv", (data_r, back_w)
        peer_role, peer_fds = "send", (data_w, back_r)
    else:
        measure_role, measure_fds = "ping", (data_w, back_r)
        peer_role, peer_fds = "echo", (data_r, back_w)
    if contender.transport == "c":
        binary = str(h.build_c("pipe_bench"))
        sizes = [str(workload.size), str(workload.count)]
        measure_argv = [binary, measure_role, *map(str, measure_fds), *sizes, str(cpus[0])]
        peer_argv = [binary, peer_role, *map(str, peer_fds), *sizes, str(cpus[1])]
    else:
        measure_argv = h.role_command(SCRIPT, measure_role, contender, workload, measure_fds, cpus[0])
        peer_argv = h.role_command(SCRIPT, peer_role, contender, workload, peer_fds, cpus[1])
    return h.run_pair(measure_argv, peer_argv, measure_fds=measure_fds, peer_fds=peer_fds)


def contenders_for(transports: list[str] | None, loops: list[str]) -> list[h.Contender]:
    available = ["aioipc", "asyncio", "os"] + (["c"] if h.build_c("pipe_bench") else [])
    chosen = transports or available
    unknown = set(chosen) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown transport(s) {sorted(unknown)}; choose from {sorted(LABELS)}")
    result = []
    for transport in chosen:
        if transport not in available:
            print(f"skipping {transport}: not available (gcc missing?)", file=sys.stderr)
        elif transport in ("aioipc", "asyncio"):
            result += [h.Contender(transport, LABELS[transport], loop) for loop in loops]
        else:
            result.append(h.Contender(transport, LABELS[transport]))
    return result


def workloads_for(sizes: list[int] | None, count: int | None, quick: bool) -> list[h.Workload]:
    scale = 4 if quick else 1
    workloads = []
    for size in sizes or [64, 2**20]:
        # Long enough that process start-up and the first chunks do not weigh.
        default = max(50, 500_000 * 64 // max(size, 64)) if size < 64 * 1024 else 300
        workloads.append(h.Workload("throughput", size, count or default // scale))
        if size < LATENCY_MAX_SIZE:
            workloads.append(h.Workload("latency", size, count or 10_000 // scale))
    return sorted(workloads, key=lambda w: (w.size, w.kind))


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratios issue 2 names, for every loop measured."""
    by_key = {c.key: c for c in contenders}
    small_tput = h.Workload("throughput", 64)
    small_rtt = h.Workload("latency", 64)
    big_tput = h.Workload("throughput", 2**20)
    targets = []
    for loop, rtt_bound in (("asyncio", 0.6), ("uvloop", 1.0)):
        ours, theirs, c = by_key.get(f"aioipc@{loop}"), by_key.get(f"asyncio@{loop}"), by_key.get("c")
        if ours and theirs:
            targets += [
                h.Target(
                    f"aioipc/asyncio 64 B msgs/s, {loop}", ours, theirs, small_tput, "msgs_per_s", ">=", 1.5
                ),
                h.Target(
                    f"aioipc/asyncio 64 B RTT p50, {loop}", ours, theirs, small_rtt, "p50_us", "<=", rtt_bound
                ),
            ]
        if ours and c:
            targets.append(h.Target(f"aioipc/C 1 MiB GB/s, {loop}", ours, c, big_tput, "gb_per_s", ">=", 0.8))
    return targets


def main(argv: list[str] | None = None) -> bool:
    """Run the pipe benchmarks, print the table and the ratios; True when every target is met."""
    args = h.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    contenders = contenders_for(args.transport, args.loop)
    workloads = workloads_for(args.size, args.count, args.quick)
    runs = args.runs or (3 if args.quick else 5)
    results = h.collect(measure, contenders, workloads, runs)
    h.print_table("pipe", results, contenders, workloads, runs)
    return h.print_targets(results, targets_for(contenders))


if __name__ == "__main__":
    if h.ROLE_FLAG in sys.argv:
        h.role_main(ROLES)
    main()
