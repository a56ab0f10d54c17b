"""Fairness: how long a flooded stream keeps the loop, and what its yields cost.

A child process floods one stream (64 B messages, as fast as it can); this
process receives for a while with a ticker task beside it. For each
transport it prints the receive rate, the ticker's turns per 10,000
receives, the longest the ticker waited (in this thread's CPU time, so the
machine's other load does not count), and the CPU work done per yield.
The budget (``FAIR_OPS``) is right when the longest wait stays near 1 ms
and the yields cost little of the rate. Example::

    python benchmarks/bench_fairness.py --quick --loop uvloop
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable

import anyio

import aioipc
import aioipc.pipes
import aioipc.sockets
from aioipc._core.streams import FAIR_OPS
from aioipc.shm import Ring
from aioipc.testing import measure_fairness

PAYLOAD = b"x" * 64
TRANSPORTS = ("pipe", "unix", "ring")


async def flood(transport: str, where: str) -> None:
    """The child: send 64 B messages until the other side goes away."""
    try:
        if transport == "ring":
            async with await Ring.attach(where) as ring:
                while True:
                    await ring.send_many([PAYLOAD] * 64)
        if transport == "pipe":
            tx = aioipc.framed(aioipc.pipes.from_fd(int(where), "w"))
        else:
            tx = aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=int(where))))
        async with tx:
            while True:
                await tx.send(PAYLOAD)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
        pass


async def measure(receive: Callable[[], Awaitable[object]], seconds: float) -> dict[str, float]:
    await receive()  # the flood has started
    seen = await measure_fairness(receive, seconds)
    return {
        "msgs/s": seen.received / seen.cpu,
        "turns/10k": seen.turns_per_10k,
        "longest ms": 1000 * seen.longest,
        "work/yield ms": 1000 * seen.cpu / max(seen.turns, 1),
    }


def child(transport: str, where: str, loop: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    argv = [sys.executable, os.path.abspath(__file__), "--flood", transport, where, "--loop", loop]
    return subprocess.Popen(argv, pass_fds=pass_fds)


async def run(transport: str, seconds: float, loop: str) -> dict[str, float]:
    if transport == "ring":
        name = f"/bench-fair-{uuid.uuid4().hex[:8]}"
        async with await Ring.create(name, 2**20) as ring:
            proc = child(transport, name, loop)
            result = await measure(ring.receive, seconds)
    elif transport == "pipe":
        r, w = os.pipe()
        proc = child(transport, str(w), loop, (w,))
        os.close(w)
        async with aioipc.framed(aioipc.pipes.from_fd(r, "r")) as rx:
            result = await measure(rx.receive, seconds)
    else:
        ours, theirs = socket.socketpair()
        proc = child(transport, str(theirs.fileno()), loop, (theirs.fileno(),))
        theirs.close()
        async with aioipc.framed(aioipc.sockets.from_socket(ours)) as stream:
            result = await measure(stream.receive, seconds)
    proc.wait(timeout=10)
    return result


def main(argv: list[str] | None = None) -> bool:
    """Print the fairness table for each loop asked for; no target (``run.py`` calls it with its flags)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per transport instead of 2 s")
    parser.add_argument("--loop", default="asyncio,uvloop", help="asyncio, uvloop, or both, comma-separated")
    parser.add_argument("--transport", default=",".join(TRANSPORTS))
    parser.add_argument("--flood", nargs=2, metavar=("TRANSPORT", "WHERE"), help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)  # run.py passes the shared flags of every benchmark
    if args.flood:
        aioipc.run(flood(*args.flood), loop=args.loop)
        return True
    seconds = 0.3 if args.quick else 2.0
    transports = [t for t in args.transport.split(",") if t in TRANSPORTS] or list(TRANSPORTS)
    for loop in args.loop.split(","):
        print(f"\nfairness: FAIR_OPS = {FAIR_OPS}; loop {loop}; {seconds} s per transport; 64 B messages")
        print(f"{'transport':10} {'msgs/s':>10} {'turns/10k':>10} {'longest ms':>11} {'work/yield ms':>14}")
        for transport in transports:
            r = aioipc.run(run(transport, seconds, loop), loop=loop)
            print(
                f"{transport:10} {r['msgs/s']:10.0f} {r['turns/10k']:10.1f} "
                f"{r['longest ms']:11.2f} {r['work/yield ms']:14.3f}"
            )
    return True


if __name__ == "__main__":
    main()
