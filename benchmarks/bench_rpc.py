"""RPC: aioipc.rpc round trips and calls in flight, against aioipc's raw framed stream and plain nats-py.

Contenders, each a client process and a server process:

- ``framed-unix``: the floor. ``aioipc.framed`` over a unix socketpair, a
  64-byte message echoed back (no JSON, no dispatch).
- ``rpc-unix``: ``aioipc.rpc.Client`` calling ``echo`` with a 64-character
  string over the same kind of socketpair, served by ``serve_stream``; one
  call at a time.
- ``rpc-unix-64``: the same, 64 calls in flight at once (throughput only).
- ``nats-request`` / ``rpc-nats``: over a private ``nats-server`` the
  benchmark starts (skipped without it): plain nats-py ``request()`` to a
  plain nats-py responder, against ``aioipc.rpc`` on both ends.

Workloads: 64 B round trips (p50, p99) and calls/s. Example::

    python benchmarks/bench_rpc.py --quick --loop uvloop
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from typing import Any

import _harness as h

SCRIPT = os.path.abspath(__file__)
IN_FLIGHT = 64
NATS_URL_VARIABLE = "AIOIPC_BENCH_NATS_URL"
SUBJECT = "bench.rpc"
NATS = {"nats-request", "rpc-nats"}


def _payload(size: int) -> str:
    return "x" * size


async def _client(fd: int) -> Any:
    import aioipc.rpc
    import aioipc.sockets

    return aioipc.rpc.Client(aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=fd))))


async def _echo(value: Any) -> Any:
    return value


# ---------------------------------------------------------------- over a unix socketpair


async def framed_ping(a: h.RoleArgs) -> dict[str, float]:
    import aioipc
    import aioipc.sockets

    async with aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=a.fds[0]))) as msgs:
        return await h.ping_messages(msgs.send, msgs.receive, a)


async def framed_echo(a: h.RoleArgs) -> dict[str, float]:
    import aioipc
    import aioipc.sockets

    async with aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=a.fds[0]))) as msgs:
        return await h.echo_messages(msgs, msgs.send)


async def rpc_ping(a: h.RoleArgs) -> dict[str, float]:
    payload = _payload(a.size)
    async with await _client(a.fds[0]) as client:
        call = client.call
        rounds = h.RoundTrips(a.count)
        for _ in rounds:
            await call("echo", payload)
        return rounds.result()


async def _calls(client: Any, a: h.RoleArgs, in_flight: int) -> dict[str, float]:
    payload = _payload(a.size)
    call = client.call
    remaining = a.count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call("echo", payload)

    for _ in range(h.warmup_rounds(a.count)):
        await call("echo", payload)
    with h.Stopwatch(None) as watch:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return watch.result(a.count, a.size)


async def rpc_calls(a: h.RoleArgs) -> dict[str, float]:
    async with await _client(a.fds[0]) as client:
        return await _calls(client, a, 1)


async def rpc_calls_in_flight(a: h.RoleArgs) -> dict[str, float]:
    async with await _client(a.fds[0]) as client:
        return await _calls(client, a, IN_FLIGHT)


async def rpc_serve(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.rpc
    import aioipc.sockets

    async with aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=a.fds[0]))) as msgs:
        await aioipc.rpc.serve_stream(msgs, {"echo": _echo}, max_concurrency=IN_FLIGHT)
    return {}


# ---------------------------------------------------------------- over NATS


async def nats_ping(a: h.RoleArgs) -> dict[str, float]:
    import nats

    nc = await nats.connect(os.environ[NATS_URL_VARIABLE])
    payload = _payload(a.size).encode()
    request = nc.request
    h.wait_go(a.fds[0])  # the server is subscribed
    rounds = h.RoundTrips(a.count)
    for _ in rounds:
        await request(SUBJECT, payload, timeout=10)
    await nc.publish(SUBJECT + ".stop", b"")
    await nc.close()
    return rounds.result()


async def nats_echo(a: h.RoleArgs) -> dict[str, float]:
    import nats

    nc = await nats.connect(os.environ[NATS_URL_VARIABLE])
    done = asyncio.Event()

    async def answer(msg: Any) -> None:
        await msg.respond(msg.data)

    async def stop(msg: Any) -> None:
        done.set()

    await nc.subscribe(SUBJECT, cb=answer)
    await nc.subscribe(SUBJECT + ".stop", cb=stop)
    await nc.flush()
    h.signal_go(a.fds[0])
    await done.wait()
    await nc.close()
    return {}


async def rpc_nats_ping(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.rpc

    payload = _payload(a.size)
    async with await aioipc.rpc.connect(f"{os.environ[NATS_URL_VARIABLE]}/{SUBJECT}") as client:
        call = client.call
        h.wait_go(a.fds[0])  # the server is subscribed
        rounds = h.RoundTrips(a.count)
        for _ in rounds:
            await call("echo", payload)
        await client.notify("stop")
    return rounds.result()


async def rpc_nats_serve(a: h.RoleArgs) -> dict[str, float]:
    import aioipc.rpc

    done = asyncio.Event()

    async def stop() -> None:
        done.set()

    handlers = {"echo": _echo, "stop": stop}
    async with await aioipc.rpc.serve(f"{os.environ[NATS_URL_VARIABLE]}/{SUBJECT}", handlers):
        h.signal_go(a.fds[0])  # serving: the subscription is known to the NATS server
        await done.wait()
    return {}


# ---------------------------------------------------------------- wiring

ROLES: dict[tuple[str, str], h.Role] = {
    **h.roles("framed-unix", ping=framed_ping, echo=framed_echo),
    **h.roles("rpc-unix", ping=rpc_ping, calls=rpc_calls, serve=rpc_serve),
    **h.roles("rpc-unix-64", calls=rpc_calls_in_flight, serve=rpc_serve),
    **h.roles("nats-request", ping=nats_ping, echo=nats_echo),
    **h.roles("rpc-nats", ping=rpc_nats_ping, serve=rpc_nats_serve),
}

LABELS = {
    "framed-unix": "aioipc framed unix (raw messages)",
    "rpc-unix": "aioipc.rpc unix, one call at a time",
    "rpc-unix-64": f"aioipc.rpc unix, {IN_FLIGHT} calls in flight",
    "nats-request": "nats-py request() to a nats-py responder",
    "rpc-nats": "aioipc.rpc over NATS",
}

_nats_server: subprocess.Popen[str] | None = None


def _start_nats() -> str | None:
    """A private nats-server on a free loopback port for this run; its URL, or None without one."""
    global _nats_server
    if _nats_server is None:
        exe = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")
        if exe is None:
            return None
        _nats_server = subprocess.Popen(
            [exe, "-a", "127.0.0.1", "-p", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert _nats_server.stderr is not None
        for line in _nats_server.stderr:
            if "Listening for client connections on" in line:
                os.environ[NATS_URL_VARIABLE] = "nats://" + line.rsplit(" ", 1)[1].strip()
            if "Server is ready" in line:
                break
    return os.environ.get(NATS_URL_VARIABLE)


def _stop_nats() -> None:
    global _nats_server
    if _nats_server is not None:
        _nats_server.terminate()
        _nats_server.wait(timeout=10)
        assert _nats_server.stderr is not None
        _nats_server.stderr.close()
        _nats_server = None


def applies(contender: h.Contender, workload: h.Workload) -> bool:
    if workload.kind == "latency":
        return contender.transport != "rpc-unix-64"
    return contender.transport in ("rpc-unix", "rpc-unix-64")


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: the client on ``cpus[0]``, the server on ``cpus[1]``."""
    transport = contender.transport
    client_role = "ping" if workload.kind == "latency" else "calls"
    server_role = "echo" if transport in ("framed-unix", "nats-request") else "serve"
    if transport in NATS:
        go_r, go_w = os.pipe()  # the server says when it is subscribed
        return h.run_sides(SCRIPT, contender, workload, cpus, (client_role, (go_r,)), (server_role, (go_w,)))
    ours, theirs = socket.socketpair()
    a, b = ours.detach(), theirs.detach()
    return h.run_sides(SCRIPT, contender, workload, cpus, (client_role, (a,)), (server_role, (b,)))


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratios issue 13 names, for every loop measured."""
    rtt, calls = h.Workload("latency", 64), h.Workload("throughput", 64)
    wanted: list[h.TargetSpec] = []
    for loop in h.LOOPS:
        wanted += [
            (
                f"rpc/framed RTT p50, unix, {loop}",
                f"rpc-unix@{loop}",
                f"framed-unix@{loop}",
                rtt,
                "p50_us",
                "<=",
                1.5,
            ),
            (
                f"rpc {IN_FLIGHT} in flight/sequential calls/s, {loop}",
                f"rpc-unix-64@{loop}",
                f"rpc-unix@{loop}",
                calls,
                "msgs_per_s",
                ">=",
                3.0,
            ),
            (
                f"rpc/nats-py RTT p50, NATS, {loop}",
                f"rpc-nats@{loop}",
                f"nats-request@{loop}",
                rtt,
                "p50_us",
                "<=",
                1.2,
            ),
        ]
    return h.targets(contenders, wanted)


def main(argv: list[str] | None = None) -> bool:
    """Run the rpc benchmarks, print the table and the ratios; True when every target is met."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    try:
        available = [t for t in LABELS if t not in NATS or _start_nats() is not None]
        contenders = h.pick_contenders(args, LABELS, available=available, missing="nats-server missing?")
        workloads = h.make_workloads(args, [64], lambda size: 20_000, latency_count=5_000)
        return h.report(
            "rpc", measure, contenders, workloads, args.runs, targets_for(contenders), applies=applies
        )
    finally:
        _stop_nats()


if __name__ == "__main__":
    h.script_main(ROLES, main)
