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

import _frames as f
import _harness as h

SCRIPT = os.path.abspath(__file__)
LATENCY_MAX_SIZE = 64 * 1024  # round trips are measured for sizes below this
BUFFER = 64 * 1024  # the blocking contender's buffer size


# ---------------------------------------------------------------- aioipc


def _aioipc_pipe(fd: int, mode: str, size: int) -> object:
    import aioipc
    import aioipc.pipes

    return aioipc.framed(aioipc.pipes.from_fd(fd, mode), max_size=size)


async def aioipc_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    async with _aioipc_pipe(data_fd, "w", a.size) as tx:  # type: ignore[attr-defined]
        return await h.send_messages(tx.send, a, go_fd)


async def aioipc_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    async with _aioipc_pipe(data_fd, "r", a.size) as rx:  # type: ignore[attr-defined]
        return await h.receive_messages(rx.receive, a, go_fd)


async def aioipc_ping(a: h.RoleArgs) -> dict[str, float]:
    out_fd, in_fd = a.fds
    async with (
        _aioipc_pipe(out_fd, "w", a.size) as tx,  # type: ignore[attr-defined]
        _aioipc_pipe(in_fd, "r", a.size) as rx,  # type: ignore[attr-defined]
    ):
        return await h.ping_messages(tx.send, rx.receive, a)


async def aioipc_echo(a: h.RoleArgs) -> dict[str, float]:
    in_fd, out_fd = a.fds
    async with (
        _aioipc_pipe(in_fd, "r", a.size) as rx,  # type: ignore[attr-defined]
        _aioipc_pipe(out_fd, "w", a.size) as tx,  # type: ignore[attr-defined]
    ):
        return await h.echo_messages(rx, tx.send)


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
    await f.send_frames(writer, a, go_fd)
    await _asyncio_close(writer, protocol)
    return {}


async def asyncio_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    reader = await _asyncio_reader(data_fd)
    return await f.receive_frames(reader.readexactly, a, go_fd)


async def asyncio_ping(a: h.RoleArgs) -> dict[str, float]:
    out_fd, in_fd = a.fds
    writer, protocol = await _asyncio_writer(out_fd)
    result = await f.ping_frames(await _asyncio_reader(in_fd), writer, a)
    await _asyncio_close(writer, protocol)
    return result


async def asyncio_echo(a: h.RoleArgs) -> dict[str, float]:
    in_fd, out_fd = a.fds
    reader = await _asyncio_reader(in_fd)
    writer, protocol = await _asyncio_writer(out_fd)
    await f.echo_frames(reader, writer)
    await _asyncio_close(writer, protocol)
    return {}


# ---------------------------------------------------------------- blocking os.pipe


def os_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    payload = b"x" * a.size
    header = f.HEADER.pack(a.size)
    with open(data_fd, "wb", buffering=BUFFER) as writer:
        h.wait_go(go_fd)
        for _ in range(a.count):
            writer.write(header)
            writer.write(payload)
    return {}


def os_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    unpack = f.HEADER.unpack
    with open(data_fd, "rb", buffering=BUFFER) as reader, h.Stopwatch(go_fd) as watch:
        for _ in range(a.count):
            (size,) = unpack(reader.read(4))
            message = reader.read(size)
    assert len(message) == a.size
    return watch.result(a.count, a.size)


def os_ping(a: h.RoleArgs) -> dict[str, float]:
    out_fd, in_fd = a.fds
    payload = b"x" * a.size
    header = f.HEADER.pack(a.size)
    unpack = f.HEADER.unpack
    rounds = h.RoundTrips(a.count)
    with open(out_fd, "wb", buffering=BUFFER) as writer, open(in_fd, "rb", buffering=BUFFER) as reader:
        for _ in rounds:
            writer.write(header)
            writer.write(payload)
            writer.flush()
            (size,) = unpack(reader.read(4))
            reader.read(size)
    return rounds.result()


def os_echo(a: h.RoleArgs) -> dict[str, float]:
    in_fd, out_fd = a.fds
    unpack = f.HEADER.unpack
    with open(in_fd, "rb", buffering=BUFFER) as reader, open(out_fd, "wb", buffering=BUFFER) as writer:
        while header := reader.read(4):
            (size,) = unpack(header)
            writer.write(header)
            writer.write(reader.read(size))
            writer.flush()
    return {}


# ---------------------------------------------------------------- wiring


ROLES: dict[tuple[str, str], h.Role] = {
    **h.roles("aioipc", send=aioipc_send, recv=aioipc_recv, ping=aioipc_ping, echo=aioipc_echo),
    **h.roles("asyncio", send=asyncio_send, recv=asyncio_recv, ping=asyncio_ping, echo=asyncio_echo),
    **h.roles("os", send=os_send, recv=os_recv, ping=os_ping, echo=os_echo),
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
        sides = ("recv", (data_r, back_w)), ("send", (data_w, back_r))
    else:
        sides = ("ping", (data_w, back_r)), ("echo", (data_r, back_w))
    binary = h.build_c("pipe_bench") if contender.transport == "c" else None
    return h.run_sides(SCRIPT, contender, workload, cpus, *sides, binary=binary)


def main(argv: list[str] | None = None) -> bool:
    """Run the pipe benchmarks, print the table and the ratios; True when every target is met."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    available = ["aioipc", "asyncio", "os"] + (["c"] if h.build_c("pipe_bench") else [])
    contenders = h.pick_contenders(args, LABELS, available=available, asynchronous=("aioipc", "asyncio"))
    latency_sizes = range(LATENCY_MAX_SIZE)
    workloads = h.make_workloads(args, [64, 2**20], h.stream_count(500_000), latency_sizes=latency_sizes)
    small_tput, small_rtt = h.Workload("throughput", 64), h.Workload("latency", 64)
    big_tput = h.Workload("throughput", 2**20)
    wanted: list[h.TargetSpec] = []  # the ratios issue 2 names, for every loop measured
    for loop, rtt_bound in (("asyncio", 0.6), ("uvloop", 1.0)):
        ours, theirs = f"aioipc@{loop}", f"asyncio@{loop}"
        wanted += [
            (f"aioipc/asyncio 64 B msgs/s, {loop}", ours, theirs, small_tput, "msgs_per_s", ">=", 1.5),
            (f"aioipc/asyncio 64 B RTT p50, {loop}", ours, theirs, small_rtt, "p50_us", "<=", rtt_bound),
            (f"aioipc/C 1 MiB GB/s, {loop}", ours, "c", big_tput, "gb_per_s", ">=", 0.8),
        ]
    return h.report("pipe", measure, contenders, workloads, args.runs, h.targets(contenders, wanted))


if __name__ == "__main__":
    h.script_main(ROLES, main)
