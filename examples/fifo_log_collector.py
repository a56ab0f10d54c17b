"""A log collector reading a FIFO that many short-lived shell commands write to.

A persistent reader keeps reading while writers come and go, so every
`echo ... > fifo` line arrives. Run it with no arguments to watch it collect
lines from 20 shell writers and stop; or with `--forever` and write to the
FIFO it prints yourself.

    python examples/fifo_log_collector.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import aioipc
import aioipc.fifo


async def main(forever: bool) -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="aioipc-"), "log.fifo")
    try:
        async with await aioipc.fifo.create(path) as fifo, await fifo.open_reader(persistent=True) as reader:
            print(f"collecting from fifo:{path}", flush=True)
            writers = None
            if not forever:
                script = 'for i in $(seq 1 20); do echo "job $i done" > "$0"; done'
                writers = await asyncio.create_subprocess_exec("sh", "-c", script, path)
            buffered = b""
            lines = 0
            while forever or lines < 20:
                buffered += await reader.receive()
                *complete, buffered = buffered.split(b"\n")
                for line in complete:
                    lines += 1
                    print(f"[{lines:2}] {line.decode()}")
            if writers is not None:
                await writers.wait()
    finally:
        os.rmdir(os.path.dirname(path))


if __name__ == "__main__":
    aioipc.run(main("--forever" in sys.argv), exit_quietly=True)
