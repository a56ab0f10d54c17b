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
- ``c-seqpacket`` / ``c-dgram``: ``c/msg_bench.c``, the message sockets' floor:
  ``sendmmsg`` / ``recvmmsg`` in batches of 64 (one way throughput only).
- ``pyzmq-ipc``: pyzmq's asyncio ``PAIR`` sockets over ``ipc://`` (a Unix
  socket pyzmq makes itself; one way throughput only; bench-only,
  ``pip install 'aioipc[bench]'``).

Workloads: one way throughput (64 B: msgs/s, 1 MiB: GB/s) and 64 B round
trips (p50, p99). Example::

    python benchmarks/bench_sockets.py --transport aioipc-unix,asyncio-unix --loop uvloop --size 64
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import tempfile
from typing import Any

import _frames as f
import _harness as h

SCRIPT = os.path.abspath(__file__)
LATENCY_MAX_SIZE = 64 * 1024
MESSAGE_SOCKETS = {"aioipc-seqpacket", "aioipc-dgram", "c-seqpacket", "c-dgram"}


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


def _is_dgram(stream: Any) -> bool:
    import aioipc.sockets

    return isinstance(stream, aioipc.sockets.DatagramStream)


async def aioipc_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    async with _aioipc_stream(data_fd, a.size) as tx:
        return await h.send_messages(tx.send, a, go_fd)


async def aioipc_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    async with _aioipc_stream(data_fd, a.size) as rx:
        return await h.receive_messages(rx.receive, a, go_fd)


async def aioipc_ping(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    async with _aioipc_stream(fd, a.size) as msgs:
        result = await h.ping_messages(msgs.send, msgs.receive, a)
        if _is_dgram(msgs):
            await msgs.send(b"")  # tells the echo side to stop
    return result


async def aioipc_echo(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    async with _aioipc_stream(fd, a.size) as msgs:
        dgram = _is_dgram(msgs)
        async for message in msgs:
            if dgram and not message:
                break  # the ping side is done
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
    await f.send_frames(writer, a, go_fd)
    writer.close()
    await writer.wait_closed()
    return {}


async def asyncio_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    reader, writer = await _asyncio_pair(data_fd)
    result = await f.receive_frames(reader.readexactly, a, go_fd)
    writer.close()
    return result


async def asyncio_ping(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    reader, writer = await _asyncio_pair(fd)
    result = await f.ping_frames(reader, writer, a)
    writer.close()
    await writer.wait_closed()
    return result


async def asyncio_echo(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    reader, writer = await _asyncio_pair(fd)
    await f.echo_frames(reader, writer)
    writer.close()
    return {}


# ---------------------------------------------------------------- anyio


async def _anyio_stream(fd: int) -> tuple[Any, Any]:
    """The socket stream, and the buffered stream to read it with."""
    import anyio.abc
    from anyio.streams.buffered import BufferedByteReceiveStream

    stream = await anyio.abc.UNIXSocketStream.from_socket(_socket(fd))
    return stream, BufferedByteReceiveStream(stream)


async def anyio_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    stream, _ = await _anyio_stream(data_fd)
    data = f.frame(a.size)
    h.wait_go(go_fd)
    async with stream:
        for _ in range(a.count):
            await stream.send(data)
    return {}


async def anyio_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    stream, buffered = await _anyio_stream(data_fd)
    async with stream:
        return await f.receive_frames(buffered.receive_exactly, a, go_fd)


async def anyio_ping(a: h.RoleArgs) -> dict[str, float]:
    fd, _ = a.fds
    stream, buffered = await _anyio_stream(fd)
    data = f.frame(a.size)
    unpack = f.HEADER.unpack
    rounds = h.RoundTrips(a.count)
    async with stream:
        for _ in rounds:
            await stream.send(data)
            (size,) = unpack(await buffered.receive_exactly(4))
            await buffered.receive_exactly(size)
    return rounds.result()


async def anyio_echo(a: h.RoleArgs) -> dict[str, float]:
    import anyio

    fd, _ = a.fds
    stream, buffered = await _anyio_stream(fd)
    pack, unpack = f.HEADER.pack, f.HEADER.unpack
    async with stream:
        while True:
            try:
                (size,) = unpack(await buffered.receive_exactly(4))
            except (anyio.EndOfStream, anyio.IncompleteRead):
                break
            await stream.send(pack(size) + await buffered.receive_exactly(size))
    return {}


# ---------------------------------------------------------------- pyzmq

ZMQ_ENDPOINT = "AIOIPC_BENCH_ZMQ_ENDPOINT"  # the ipc:// endpoint measure() picked, in the environment
DONE = b"done"


def _zmq_socket(bind: bool) -> Any:
    import zmq
    import zmq.asyncio

    sock = zmq.asyncio.Context.instance().socket(zmq.PAIR)
    (sock.bind if bind else sock.connect)(os.environ[ZMQ_ENDPOINT])
    return sock


async def zmq_send(a: h.RoleArgs) -> dict[str, float]:
    _, go_fd = a.fds
    payload = b"x" * a.size
    h.wait_go(go_fd)  # connect once the receiver has bound and started its clock
    sock = _zmq_socket(bind=False)
    for _ in range(a.count):
        await sock.send(payload)
    # Wait for the receiver to have them all: pyzmq drops what its I/O thread still
    # holds when the process exits.
    assert await sock.recv() == DONE
    sock.close(linger=0)
    return {}


async def zmq_recv(a: h.RoleArgs) -> dict[str, float]:
    _, go_fd = a.fds
    sock = _zmq_socket(bind=True)
    result = await h.receive_messages(sock.recv, a, go_fd)
    await sock.send(DONE)
    sock.close(linger=5000)
    return result


def _measure_zmq(workload: h.Workload, contender: h.Contender, cpus: tuple[int, int]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="aioipc-bench-") as directory:
        os.environ[ZMQ_ENDPOINT] = f"ipc://{directory}/zmq.sock"
        go_r, go_w = os.pipe()
        try:
            return h.run_sides(
                SCRIPT, contender, workload, cpus, ("recv", (go_r, go_w)), ("send", (go_w, go_r))
            )
        finally:
            del os.environ[ZMQ_ENDPOINT]


# ---------------------------------------------------------------- wiring


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
    key: role
    for library, (send, recv, ping, echo) in _ROLE_FUNCTIONS.items()
    for family in _FAMILIES[library]
    for key, role in h.roles(f"{library}-{family}", send=send, recv=recv, ping=ping, echo=echo).items()
} | h.roles("pyzmq-ipc", send=zmq_send, recv=zmq_recv)

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
    "c-seqpacket": "C unix seqpacket, sendmmsg/recvmmsg x64 (gcc -O2)",
    "c-dgram": "C unix datagram, sendmmsg/recvmmsg x64 (gcc -O2)",
    "pyzmq-ipc": "pyzmq asyncio PAIR, ipc://",
}
ASYNC_LIBRARIES = ("aioipc", "asyncio", "anyio", "pyzmq")


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
    if contender.transport == "pyzmq-ipc":  # pyzmq makes its own socket, at an endpoint we pick
        return _measure_zmq(workload, contender, cpus)
    ours, theirs = _pair(contender.transport)
    if contender.transport in MESSAGE_SOCKETS:
        # a message is bounded by SO_SNDBUF (capped by net.core.wmem_max)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(1 << 20, 4 * workload.size))
    a, b = ours.detach(), theirs.detach()
    if workload.kind == "throughput":
        go_r, go_w = os.pipe()
        sides = ("recv", (b, go_w)), ("send", (a, go_r))
    else:
        sides = ("ping", (a, a)), ("echo", (b, b))
    binary = None
    if contender.transport.startswith("c-"):
        binary = h.build_c("msg_bench" if contender.transport in MESSAGE_SOCKETS else "pipe_bench")
    return h.run_sides(SCRIPT, contender, workload, cpus, *sides, binary=binary)


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratios issue 3 names, for every loop measured."""
    tput, rtt, bulk = h.Workload("throughput", 64), h.Workload("latency", 64), h.Workload("throughput", 2**20)
    wanted: list[h.TargetSpec] = []
    for loop, rtt_bound in (("asyncio", 0.6), ("uvloop", 1.0)):
        for family in ("unix", "tcp"):
            ours, theirs, c = f"aioipc-{family}@{loop}", f"asyncio-{family}@{loop}", f"c-{family}"
            at = f"{family}, {loop}"
            wanted += [
                (f"aioipc/asyncio 64 B msgs/s, {at}", ours, theirs, tput, "msgs_per_s", ">=", 2.5),
                (f"aioipc/asyncio 64 B RTT p50, {at}", ours, theirs, rtt, "p50_us", "<=", rtt_bound),
                (f"aioipc/C 1 MiB GB/s, {at}", ours, c, bulk, "gb_per_s", ">=", 0.5),
            ]
        stream = f"aioipc-unix@{loop}"
        name = f"aioipc/anyio 64 B msgs/s, unix, {loop}"
        wanted.append((name, stream, f"anyio-unix@{loop}", tput, "msgs_per_s", ">=", 10))
        # The moonshot: coalesced sends against C writing one message per syscall.
        name = f"aioipc/C one write per message 64 B msgs/s, unix, {loop}"
        wanted.append((name, stream, "c-unix", tput, "msgs_per_s", ">=", 1.5))
        name = f"aioipc/pyzmq ipc 64 B msgs/s, unix, {loop}"
        wanted.append((name, stream, f"pyzmq-ipc@{loop}", tput, "msgs_per_s", ">=", 1.0))
        for kind in ("seqpacket", "dgram"):
            name = f"aioipc {kind}/unix stream 64 B msgs/s, {loop}"
            wanted.append((name, f"aioipc-{kind}@{loop}", stream, tput, "msgs_per_s", ">=", 1.0))
            # how near the kernel's own per-message cost a message socket gets (information)
            name = f"aioipc {kind}/C sendmmsg+recvmmsg floor 64 B msgs/s, {loop} (information)"
            wanted.append((name, f"aioipc-{kind}@{loop}", f"c-{kind}", tput, "msgs_per_s", ">=", 0.0))
    return h.targets(contenders, wanted)


def main(argv: list[str] | None = None) -> bool:
    """Run the socket benchmarks, print the table and the ratios; True when every target is met."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    has_c = h.build_c("pipe_bench") is not None
    has_zmq = importlib.util.find_spec("zmq") is not None
    available = [
        t for t in LABELS if (has_c or not t.startswith("c-")) and (has_zmq or not t.startswith("pyzmq"))
    ]
    asynchronous = {t for t in LABELS if t.split("-")[0] in ASYNC_LIBRARIES}
    contenders = h.pick_contenders(args, LABELS, available=available, asynchronous=asynchronous)
    latency_sizes = range(LATENCY_MAX_SIZE)
    workloads = h.make_workloads(args, [64, 2**20], h.stream_count(300_000), latency_sizes=latency_sizes)
    from aioipc._core.speedups import ACTIVE

    print("aioipc message sockets:", "compiled accelerator" if ACTIVE else "pure Python (no accelerator)")
    return h.report(
        "sockets", measure, contenders, workloads, args.runs, targets_for(contenders), applies=_applies
    )


def _applies(contender: h.Contender, workload: h.Workload) -> bool:
    # pyzmq: one way throughput only (a PAIR echo has no end of stream to stop at); the C
    # message sockets: their floor for small messages, one way
    if contender.transport in ("c-seqpacket", "c-dgram"):
        return workload.kind == "throughput" and workload.size < 2**16
    return contender.transport != "pyzmq-ipc" or workload.kind == "throughput"


if __name__ == "__main__":
    h.script_main(ROLES, main)
