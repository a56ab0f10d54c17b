"""Idle connections: server memory per idle unix connection, aioipc against asyncio's own server.

A server process (``aioipc.serve("unix:...")`` with an echo handler, or
``asyncio.start_unix_server`` with an echo callback) is started on each
loop; this process is the client. After a warm-up round it opens
500 idle connections (``--count`` is not used: it counts messages in the
other benchmarks), reads the server's RSS
once the server counts them all, and reports the growth per connection.
Then it closes them, opens and drops 1,000 connections that vanish at
once, and reads the RSS again; over ``--runs`` rounds (at least 2) the
RSS after each round shows whether memory keeps growing.

Prints KiB per idle connection for each contender, the ratio aioipc /
asyncio (target: at most 1), and the growth across rounds.

Example::

    python benchmarks/bench_idle.py --quick
    python benchmarks/bench_idle.py --loop uvloop --count 2000 --runs 4
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h

SERVE_FLAG = "--serve"
IDLE = 500
VANISHING = 1000
KINDS = ("asyncio", "aioipc")


# ---------------------------------------------------------------- the server process


def _rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _serve(kind: str, path: str) -> None:
    if kind == "aioipc":
        import aioipc

        async def echo(msgs: object) -> None:
            async for message in msgs:  # type: ignore[attr-defined]
                await msgs.send(message)  # type: ignore[attr-defined]

        server = await aioipc.serve(f"unix:{path}", echo)

        def count() -> int:
            return server.connections

    else:
        live: set[asyncio.StreamWriter] = set()

        async def callback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            live.add(writer)
            try:
                while data := await reader.read(65536):
                    writer.write(data)
            finally:
                live.discard(writer)
                writer.close()

        plain = await asyncio.start_unix_server(callback, path)

        def count() -> int:
            return len(live)

    print("ready", flush=True)
    # Commands on stdin: "N" waits until N connections are live, then prints the RSS.
    while line := await asyncio.to_thread(sys.stdin.readline):
        wanted = int(line)
        while count() != wanted:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the last accepted connections settle into their reads
        print(_rss(), flush=True)
    if kind == "aioipc":
        await server.close()
    else:
        plain.close()


def serve_main(argv: list[str]) -> None:
    kind, loop, path = argv
    if loop == "uvloop":
        import uvloop

        uvloop.run(_serve(kind, path))
    else:
        asyncio.run(_serve(kind, path))


# ---------------------------------------------------------------- the client (this process)


class _ServerProcess:
    def __init__(self, kind: str, loop: str, path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), SERVE_FLAG, kind, loop, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def rss_with(self, connections: int) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{connections}\n")
        self.proc.stdin.flush()
        return int(self._line())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _connect(path: str, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        clients.append(sock)
    return clients


def _vanish(path: str, count: int) -> None:
    for _ in range(count):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)


def measure(kind: str, loop: str, idle: int, rounds: int) -> dict[str, Any]:
    """KiB per idle connection, and the RSS (KiB) after each round of idle + vanishing clients."""
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "idle.sock")
        server = _ServerProcess(kind, loop, path)
        try:
            for sock in _connect(path, 10):  # warm up: code paths and free lists exist
                sock.close()
            base = server.rss_with(0)
            per_connection = 0.0
            after = []
            for round_number in range(rounds):
                clients = _connect(path, idle)
                rss = server.rss_with(idle)
                if round_number == 0:
                    per_connection = (rss - base) / idle / 1024
                _vanish(path, VANISHING)
                for sock in clients:
                    sock.close()
                after.append(server.rss_with(0))
        finally:
            server.stop()
    return {"per_connection_kib": per_connection, "rounds_kib": [rss / 1024 for rss in after]}


def main(argv: list[str]) -> bool:
    args = h.parse_args(__doc__.splitlines()[0], argv)
    idle = IDLE
    rounds = max(2, args.runs if not args.quick else 2)
    print(f"\nidle unix connections: {idle} idle + {VANISHING} vanishing per round, {rounds} rounds")
    print(f"{'loop':8} {'server':8} {'KiB/conn':>9}  RSS after each round (MiB)")
    met = True
    for loop in args.loop:
        if loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                continue
        results = {}
        for kind in KINDS:
            started = time.monotonic()
            results[kind] = measure(kind, loop, idle, rounds)
            r = results[kind]
            rounds_mib = " ".join(f"{kib / 1024:.1f}" for kib in r["rounds_kib"])
            took = time.monotonic() - started
            print(f"{loop:8} {kind:8} {r['per_connection_kib']:9.1f}  {rounds_mib}   ({took:.1f} s)")
        ratio = results["aioipc"]["per_connection_kib"] / max(results["asyncio"]["per_connection_kib"], 0.1)
        print(f"{loop:8} ratio aioipc/asyncio per idle connection: {ratio:.2f} (target <= 1)")
        met = met and ratio <= 1
    return met


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == SERVE_FLAG:
        serve_main(sys.argv[2:])
    else:
        sys.exit(0 if main(sys.argv[1:]) else 1)
