"""Sockets: aioipc against asyncio streams, anyio and a C floor, over Unix and TCP sockets.

Every stream contender sends the same frames (4-byte big-endian length,
then the payload) between two processes over a connected socket pair the
harness makes (``socketpair`` for Unix, a loopback connection for TCP):

- ``aioipc-unix`` / ``aioipc-tcp``: ``aioipc.framed(aioipc.sockets.from_socket(sock))``.
- ``aioipc-seqpacket`` / ``aioipc-dgram``: Unix message sockets, no framing
  (the kernel keeps the boundaries).
- ``asyncio-unix`` / ``asyncio-tcp``: ``asyncio.open_unix_connection(sock=)`` /
  ``open_connection(sock=)``, ``readexactly`` framing, ``write`` + ``drain``.
- ``anyio-unix``: ``anyio`` socket streams with ``BufferedByteReceiveStream``
  framing (what ``anyio.connect_unix`` gives).
- ``c-unix`` / ``c-tcp``: ``c/pipe_bench.c`` (read/write on the socket fd).

Workloads: one way throughput (64 B: msgs/s, 1 MiB: GB/s) and 64 B round
trips (p50, p99). Example::

    python benchmarks/bench_sockets.py --transport aioipc-unix,asyncio-unix --loop uvloop --size 64
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from struct import Struct
from typing import Any

import _harness as h

HEADER = Struct(">I")
SCRIPT = os.path.abspath(__file__)
LATENCY_MAX_SIZE = 64 * 1024
MESSAGE_SOCKETS = {"aioipc-seqpacket", "aioipc-dgram"}


def _family(transport: str) -> str:
    return transport.rsplit("-", 1)[1]


def _socket(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)


# ---------------------------------------------------------------- aioipc


def _aioipc_stream(fd: int, size: int) -> Any:
    import aioipc
    import aioipc.sockets

    stream = aioipc.sockets.from_socket(_socket(fd), max_size=max(size, 1))
    if isinstance(stream, aioipc.sockets.SocketStream):
        return aioipc.framed(stream, max_size=size)
    return stream


async def aioipc_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    payload = b"x" * a.size
    async with _aioipc_stream(data_fd, a.size) as tx:
        h.wait_go(go_fd)
        for _ in range(a.count):
            await tx.send(payload)
    return {}


def _is_dgram(stream: Any) -> bool:
    import aioipc.sockets

    return isinstance(stream, aioipc.sockets.DatagramStream)


async def aioipc_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    async with _aioipc_stream(data_fd, a.size) as rx:
        start = time.perf_counter()
        h.signal_go(go_fd)
        for _ in range(a.count):
            message = await rx.receive()
        elapsed = time.perf_counter() - start
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


async def aioipc_ping(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    payload = b"x" * a.size
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    async with _aioipc_stream(fd, a.size) as msgs:
        for i in range(warmup + a.count):
            start = clock()
            await msgs.send(payload)
            await msgs.receive()
            if i >= warmup:
                latencies.append(clock() - start)
        if _is_dgram(msgs):
            await msgs.send(b"")  # tells the echo side to stop
    return h.latency_result(latencies)


async def aioipc_echo(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    async with _aioipc_stream(fd, a.size) as msgs:
        dgram = _is_dgram(msgs)
        async for message in msgs:
            if dgram and not message:
                break
            await msgs.send(message)
    return {}


# ---------------------------------------------------------------- asyncio streams


async def _asyncio_pair(fd: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = _socket(fd)
    if sock.family == socket.AF_UNIX:
        return await asyncio.open_unix_connection(sock=sock)
    return await asyncio.open_connection(sock=sock)


async def asyncio_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    _, writer = await _asyncio_pair(data_fd)
    frame = HEADER.pack(a.size) + b"x" * a.size
    h.wait_go(go_fd)
    for _ in range(a.count):
        writer.write(frame)
        await writer.drain()
    writer.close()
    await writer.wait_closed()
    return {}


async def asyncio_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    reader, writer = await _asyncio_pair(data_fd)
    unpack = HEADER.unpack
    start = time.perf_counter()
    h.signal_go(go_fd)
    for _ in range(a.count):
        (size,) = unpack(await reader.readexactly(4))
        message = await reader.readexactly(size)
    elapsed = time.perf_counter() - start
    writer.close()
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


async def asyncio_ping(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    reader, writer = await _asyncio_pair(fd)
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
    writer.close()
    await writer.wait_closed()
    return h.latency_result(latencies)


async def asyncio_echo(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    reader, writer = await _asyncio_pair(fd)
    pack, unpack = HEADER.pack, HEADER.unpack
    while True:
        try:
            header = await reader.readexactly(4)
        except asyncio.IncompleteReadError:
            break
        (size,) = unpack(header)
        writer.write(pack(size) + await reader.readexactly(size))
        await writer.drain()
    writer.close()
    return {}


# ---------------------------------------------------------------- anyio


async def _anyio_stream(fd: int) -> Any:
    import anyio.abc

    return await anyio.abc.UNIXSocketStream.from_socket(_socket(fd))


async def anyio_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    stream = await _anyio_stream(data_fd)
    frame = HEADER.pack(a.size) + b"x" * a.size
    h.wait_go(go_fd)
    async with stream:
        for _ in range(a.count):
            await stream.send(frame)
    return {}


async def anyio_recv(a: h.RoleArgs) -> dict[str, float]:
    from anyio.streams.buffered import BufferedByteReceiveStream

    data_fd, go_fd = a.fds
    stream = await _anyio_stream(data_fd)
    buffered = BufferedByteReceiveStream(stream)
    unpack = HEADER.unpack
    async with stream:
        start = time.perf_counter()
        h.signal_go(go_fd)
        for _ in range(a.count):
            (size,) = unpack(await buffered.receive_exactly(4))
            message = await buffered.receive_exactly(size)
        elapsed = time.perf_counter() - start
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


async def anyio_ping(a: h.RoleArgs) -> dict[str, float]:
    from anyio.streams.buffered import BufferedByteReceiveStream

    fd, _ = a.fds
    stream = await _anyio_stream(fd)
    buffered = BufferedByteReceiveStream(stream)
    frame = HEADER.pack(a.size) + b"x" * a.size
    unpack = HEADER.unpack
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    async with stream:
        for i in range(warmup + a.count):
            start = clock()
            await stream.send(frame)
            (size,) = unpack(await buffered.receive_exactly(4))
            await buffered.receive_exactly(size)
            if i >= warmup:
                latencies.append(clock() - start)
    return h.latency_result(latencies)


async def anyio_echo(a: h.RoleArgs) -> dict[str, float]:
    import anyio
    from anyio.streams.buffered import BufferedByteReceiveStream

    fd, _ = a.fds
    stream = await _anyio_stream(fd)
    buffered = BufferedByteReceiveStream(stream)
    pack, unpack = HEADER.pack, HEADER.unpack
    async with stream:
        while True:
            try:
                (size,) = unpack(await buffered.receive_exactly(4))
            except (anyio.EndOfStream, anyio.IncompleteRead):
                break
            await stream.send(pack(size) + await buffered.receive_exactly(size))
    return {}


# ---------------------------------------------------------------- wiring


def _async_role(function: object) -> h.Role:
    def role(a: h.RoleArgs) -> dict[str, float]:
        return h.run_async(function(a), a.loop)  # type: ignore[operator]

    return role


_FAMILIES = {
    "aioipc": ("unix", "tcp", "seqpacket", "dgram"),
    "asyncio": ("unix", "tcp"),
    "anyio": ("unix",),
}
_ROLE_FUNCTIONS = {
    "aioipc": (aioipc_send, aioipc_recv, aioipc_ping, aioipc_echo),
    "asyncio": (asyncio_send, asyncio_recv, asyncio_ping, asyncio_echo),
    "anyio": (anyio_send, anyio_recv, anyio_ping, anyio_echo),
}
ROLES: dict[tuple[str, str], h.Role] = {
    (role, f"{library}-{family}"): _async_role(function)
    for library, functions in _ROLE_FUNCTIONS.items()
    for family in _FAMILIES[library]
    for role, function in zip(("send", "recv", "ping", "echo"), functions, strict=True)
}

LABELS = {
    "aioipc-unix": "aioipc unix stream, framed",
    "aioipc-seqpacket": "aioipc unix seqpacket",
    "aioipc-dgram": "aioipc unix datagram",
    "asyncio-unix": "asyncio unix streams + readexactly",
    "anyio-unix": "anyio unix socket + receive_exactly",
    "c-unix": "C unix stream (gcc -O2)",
    "aioipc-tcp": "aioipc tcp, framed",
    "asyncio-tcp": "asyncio tcp streams + readexactly",
    "c-tcp": "C tcp (gcc -O2)",
}
ASYNC_LIBRARIES = ("aioipc", "asyncio", "anyio")


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def _pair(transport: str) -> tuple[socket.socket, socket.socket]:
    family = _family(transport)
    if family == "tcp":
        return _tcp_pair()
    kind = {"unix": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET, "dgram": socket.SOCK_DGRAM}[
        family
    ]
    return socket.socketpair(socket.AF_UNIX, kind)


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: a fresh socket pair, the measuring side on ``cpus[0]``, its peer on ``cpus[1]``."""
    ours, theirs = _pair(contender.transport)
    if contender.transport in MESSAGE_SOCKETS:
        # a message is bounded by SO_SNDBUF (capped by net.core.wmem_max)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(1 << 20, 4 * workload.size))
    a, b = ours.detach(), theirs.detach()
    if workload.kind == "throughput":
        go_r, go_w = os.pipe()
        measure_role, measure_fds = "recv", (b, go_w)
        peer_role, peer_fds = "send", (a, go_r)
    else:
        measure_role, measure_fds = "ping", (a, a)
        peer_role, peer_fds = "echo", (b, b)
    if contender.transport.startswith("c-"):
        binary = str(h.build_c("pipe_bench"))
        sizes = [str(workload.size), str(workload.count)]
        measure_argv = [binary, measure_role, *map(str, measure_fds), *sizes, str(cpus[0])]
        peer_argv = [binary, peer_role, *map(str, peer_fds), *sizes, str(cpus[1])]
    else:
        measure_argv = h.role_command(SCRIPT, measure_role, contender, workload, measure_fds, cpus[0])
        peer_argv = h.role_command(SCRIPT, peer_role, contender, workload, peer_fds, cpus[1])
    return h.run_pair(measure_argv, peer_argv, measure_fds=measure_fds, peer_fds=peer_fds)


def contenders_for(transports: list[str] | None, loops: list[str]) -> list[h.Contender]:
    has_c = h.build_c("pipe_bench") is not None
    available = [t for t in LABELS if has_c or not t.startswith("c-")]
    chosen = transports or available
    unknown = set(chosen) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown transport(s) {sorted(unknown)}; choose from {sorted(LABELS)}")
    result = []
    for transport in chosen:
        if transport not in available:
            print(f"skipping {transport}: not available (gcc missing?)", file=sys.stderr)
        elif transport.split("-")[0] in ASYNC_LIBRARIES:
            result += [h.Contender(transport, LABELS[transport], loop) for loop in loops]
        else:
            result.append(h.Contender(transport, LABELS[transport]))
    return result


def workloads_for(sizes: list[int] | None, count: int | None, quick: bool) -> list[h.Workload]:
    scale = 5 if quick else 1
    workloads = []
    for size in sizes or [64, 2**20]:
        default = max(50, 300_000 * 64 // max(size, 64)) if size < 64 * 1024 else 300
        workloads.append(h.Workload("throughput", size, count or default // scale))
        if size < LATENCY_MAX_SIZE:
            workloads.append(h.Workload("latency", size, count or 10_000 // scale))
    return sorted(workloads, key=lambda w: (w.size, w.kind))


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratios issue 3 names, for every loop measured."""
    by_key = {c.key: c for c in contenders}
    tput, rtt, bulk = h.Workload("throughput", 64), h.Workload("latency", 64), h.Workload("throughput", 2**20)
    wanted = []  # (name, numerator key, denominator key, workload, metric, op, bound)
    for loop, rtt_bound in (("asyncio", 0.6), ("uvloop", 1.0)):
        for family in ("unix", "tcp"):
            ours, theirs, c = f"aioipc-{family}@{loop}", f"asyncio-{family}@{loop}", f"c-{family}"
            wanted += [
                (
                    f"aioipc/asyncio 64 B msgs/s, {family}, {loop}",
                    ours,
                    theirs,
                    tput,
                    "msgs_per_s",
                    ">=",
                    2.5,
                ),
                (
                    f"aioipc/asyncio 64 B RTT p50, {family}, {loop}",
                    ours,
                    theirs,
                    rtt,
                    "p50_us",
                    "<=",
                    rtt_bound,
                ),
                (f"aioipc/C 1 MiB GB/s, {family}, {loop}", ours, c, bulk, "gb_per_s", ">=", 0.5),
            ]
        stream = f"aioipc-unix@{loop}"
        wanted.append(
            (
                f"aioipc/anyio 64 B msgs/s, unix, {loop}",
                stream,
                f"anyio-unix@{loop}",
                tput,
                "msgs_per_s",
                ">=",
                10,
            )
        )
        for kind in ("seqpacket", "dgram"):
            name = f"aioipc {kind}/unix stream 64 B msgs/s, {loop}"
            wanted.append((name, f"aioipc-{kind}@{loop}", stream, tput, "msgs_per_s", ">=", 1.0))
    return [
        h.Target(name, by_key[top], by_key[bottom], workload, metric, op, bound)  # type: ignore[arg-type]
        for name, top, bottom, workload, metric, op, bound in wanted
        if top in by_key and bottom in by_key
    ]


def main(argv: list[str] | None = None) -> bool:
    """Run the socket benchmarks, print the table and the ratios; True when every target is met."""
    args = h.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    contenders = contenders_for(args.transport, args.loop)
    workloads = workloads_for(args.size, args.count, args.quick)
    runs = args.runs or (3 if args.quick else 5)
    results = h.collect(measure, contenders, workloads, runs)
    h.print_table("sockets", results, contenders, workloads, runs)
    return h.print_targets(results, targets_for(contenders))


if __name__ == "__main__":
    if h.ROLE_FLAG in sys.argv:
        h.role_main(ROLES)
    main()
