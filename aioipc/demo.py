"""A short tour: real messages between two processes over every mechanism that works here.

Run ``python -m aioipc.demo`` (or ``make demo``). For each mechanism it
starts a child process, measures the round-trip latency of 64-byte messages
and the one-way throughput of a burst, and prints a table. It finishes in
well under a minute.

The child side of every mechanism is the same tiny protocol over a message
stream: ``E…`` is echoed back, ``S…`` is swallowed and counted, ``Q`` is
answered with the count so far, ``X`` ends it (queues have no end of stream).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from . import fifo, mq, pipes
from ._core.runner import run
from ._core.schemes import connect, serve
from ._core.streams import framed
from .process import parent_channel, spawn

__all__ = ["MECHANISMS", "main"]

Channel = tuple[Any, Any]  # (sender, receiver) message streams
Opener = Callable[[str], AbstractAsyncContextManager[Channel]]

ROUND_TRIPS = 2000
BURST = 50_000
PAYLOAD = b"x" * 63


async def _child_serve(tx: Any, rx: Any) -> None:
    count = 0
    async for message in rx:
        kind = message[:1]
        if kind == b"S":
            count += 1
        elif kind == b"E":
            await tx.send(message)
        elif kind == b"Q":
            await tx.send(b"%d" % count)
            count = 0
        elif kind == b"X":
            return


# -- mechanisms: each yields the parent's (sender, receiver) with a child running --------------


def _child_argv(mechanism: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "aioipc.demo", "--child", mechanism, *args]


@asynccontextmanager
async def _pipe(loop: str) -> AsyncIterator[Channel]:
    to_child_r, to_child_w = pipes.pipe()
    from_child_r, from_child_w = pipes.pipe()
    fds = [to_child_r.fileno(), from_child_w.fileno()]
    proc = await asyncio.create_subprocess_exec(
        *_child_argv("pipe", *map(str, fds)), "--loop", loop, pass_fds=fds
    )
    await to_child_r.aclose()
    await from_child_w.aclose()
    async with framed(to_child_w) as tx, framed(from_child_r) as rx:
        yield tx, rx
        await tx.send(b"X")
    await proc.wait()


@asynccontextmanager
async def _fifo(loop: str) -> AsyncIterator[Channel]:
    with tempfile.TemporaryDirectory(prefix="aioipc-demo-") as directory:
        down, up = os.path.join(directory, "down"), os.path.join(directory, "up")
        async with await fifo.create(down) as f_down, await fifo.create(up) as f_up:
            proc = await asyncio.create_subprocess_exec(*_child_argv("fifo", down, up), "--loop", loop)
            rx = framed(await f_up.open_reader())
            tx = framed(await f_down.open_writer(timeout=10))
            async with tx, rx:
                yield tx, rx
                await tx.send(b"X")
            await proc.wait()


def _served(address: str) -> Opener:
    """The child serves ``address`` (printing where) and the parent connects to it."""

    @asynccontextmanager
    async def opener(loop: str) -> AsyncIterator[Channel]:
        with tempfile.TemporaryDirectory(prefix="aioipc-demo-") as directory:
            where = address.format(dir=directory, pid=os.getpid())
            proc = await asyncio.create_subprocess_exec(
                *_child_argv("serve", where), "--loop", loop, stdout=asyncio.subprocess.PIPE
            )
            assert proc.stdout is not None
            bound = (await proc.stdout.readline()).decode().strip()
            if not bound:
                await proc.wait()
                raise RuntimeError(f"the child could not serve {where}")
            async with await connect(bound) as stream:
                yield stream, stream
                await stream.send(b"X")
            await proc.wait()

    return opener


@asynccontextmanager
async def _spawned(loop: str) -> AsyncIterator[Channel]:
    proc = await spawn([*_child_argv("spawn"), "--loop", loop])
    async with proc:
        channel = proc.channel
        assert channel is not None  # spawn(channel=True) is the default
        yield channel, channel
        await channel.send(b"X")
        await proc.wait()


@asynccontextmanager
async def _posix_queues(loop: str) -> AsyncIterator[Channel]:
    down, up = f"/aioipc-demo-{os.getpid()}-down", f"/aioipc-demo-{os.getpid()}-up"
    async with await mq.open(down, create=True) as tx, await mq.open(up, create=True) as rx:
        proc = await asyncio.create_subprocess_exec(*_child_argv("mq", down, up), "--loop", loop)
        yield tx, rx
        await tx.send(b"X")
        await proc.wait()


def _sysv_keys() -> tuple[int, int]:
    base = 0x5A000000 | (os.getpid() << 1 & 0xFFFFFF)
    return base, base | 1


@asynccontextmanager
async def _sysv_queues(loop: str) -> AsyncIterator[Channel]:
    from . import sysv  # the optional "sysv" extra

    down, up = _sysv_keys()
    async with (
        await sysv.MessageQueue.open(down, create=True) as tx,
        await sysv.MessageQueue.open(up, create=True) as rx,
    ):
        proc = await asyncio.create_subprocess_exec(
            *_child_argv("sysvmq", str(down), str(up)), "--loop", loop
        )
        yield tx, rx
        await tx.send(b"X")
        await proc.wait()


MECHANISMS: dict[str, Opener] = {
    "pipe": _pipe,
    "fifo": _fifo,
    "unix": _served("unix:{dir}/demo.sock"),
    "unix-abstract": _served("unix:@aioipc-demo-{pid}"),
    "unix-seqpacket": _served("unix+seqpacket:{dir}/demo.sock"),
    "tcp": _served("tcp:127.0.0.1:0"),
    "spawn-channel": _spawned,
    "posix-mq": _posix_queues,
    "sysv-mq": _sysv_queues,
    "shm-ring": _served("shm:/aioipc-demo-{pid}"),
}


async def _child(mechanism: str, args: list[str]) -> None:
    if mechanism == "serve":
        done = asyncio.Event()

        async def handler(stream: Any) -> None:
            await _child_serve(stream, stream)
            done.set()

        async with await serve(args[0], handler) as server:
            print(server.address, flush=True)
            await done.wait()
        return
    tx: Any
    rx: Any
    if mechanism == "pipe":
        rx = framed(pipes.from_fd(int(args[0]), "r"))
        tx = framed(pipes.from_fd(int(args[1]), "w"))
    elif mechanism == "fifo":
        tx = framed(await fifo.open_writer(args[1], timeout=10))
        rx = framed(await fifo.open_reader(args[0]))
    elif mechanism == "spawn":
        tx = rx = await parent_channel()
    elif mechanism == "mq":
        rx, tx = await mq.open(args[0]), await mq.open(args[1])
    elif mechanism == "sysvmq":
        from . import sysv

        rx, tx = await sysv.MessageQueue.open(int(args[0])), await sysv.MessageQueue.open(int(args[1]))
    else:
        raise SystemExit(f"unknown mechanism {mechanism!r}")
    async with tx, rx:
        await _child_serve(tx, rx)


# -- measuring ------------------------------------------------------------------------------


async def _measure(open_channel: Opener, loop: str, round_trips: int, burst: int) -> tuple[int, float, float]:
    async with open_channel(loop) as (tx, rx):
        with anyio.fail_after(60):
            samples = []
            echo = b"E" + PAYLOAD
            for _ in range(round_trips):
                start = time.perf_counter()
                await tx.send(echo)
                await rx.receive()
                samples.append(time.perf_counter() - start)
            sink = b"S" + PAYLOAD
            start = time.perf_counter()
            for _ in range(burst):
                await tx.send(sink)
            await tx.send(b"Q")
            counted = int(await rx.receive())
            elapsed = time.perf_counter() - start
    if counted != burst:
        raise RuntimeError(f"lost messages: sent {burst}, the child counted {counted}")
    return round_trips + burst, statistics.median(samples) * 1e6, burst / elapsed


def _note(name: str, rates: dict[str, float]) -> str:
    """What the ring's figure means: one ``send()`` per message is not always ahead of a pipe."""
    if name != "shm-ring" or "pipe" not in rates:
        return ""
    if rates[name] < rates["pipe"]:
        return "  one send() per message: slower than the pipe here (send_many batches are faster)"
    return f"  {rates[name] / rates['pipe']:.1f}x the pipe, one send() per message"


async def _tour(loop: str, only: list[str] | None, round_trips: int, burst: int) -> int:
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"aioipc tour on {loop_name}: {round_trips} round trips and a burst of {burst} messages")
    print(f"of {len(PAYLOAD) + 1} bytes per mechanism, parent <-> child process\n")
    print(f"{'mechanism':<16}{'messages':>10}{'latency p50':>14}{'throughput':>16}", flush=True)
    failures = 0
    rates: dict[str, float] = {}
    for name, opener in MECHANISMS.items():
        if only and name not in only:
            continue
        try:
            total, p50, rate = await _measure(opener, loop, round_trips, burst)
        except ImportError as exc:  # an optional extra is not installed
            print(f"{name:<16}skipped: {exc}")
            continue
        except Exception as exc:  # report and go on with the next mechanism
            failures += 1
            print(f"{name:<16}failed: {type(exc).__name__}: {exc}")
            continue
        rates[name] = rate
        note = _note(name, rates)
        print(f"{name:<16}{total:>10}{p50:>11.1f} µs{rate / 1000:>11.0f} k/s{note}", flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Run the tour (or, with ``--child``, one mechanism's child side)."""
    parser = argparse.ArgumentParser(prog="python -m aioipc.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--only", nargs="*", help="run only these mechanisms", choices=sorted(MECHANISMS))
    parser.add_argument("--quick", action="store_true", help="fewer messages (a smoke test)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run(_child(args.child[0], args.child[1:]), loop=args.loop)
        return 0
    counts = (200, 5_000) if args.quick else (ROUND_TRIPS, BURST)
    return run(_tour(args.loop, args.only, *counts), loop=args.loop)


if __name__ == "__main__":
    sys.exit(main())
