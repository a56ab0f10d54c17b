"""Processes appending numbered lines to one file, guarded by an fcntl lock.

Each of three writer processes reads the file's last number and appends
the next one, 50 times. Under an exclusive :class:`aioipc.sync.FileLock`
nobody reads a stale last line, so the file ends up numbered 1..150 with no
gap and no repeat; a reader takes a shared lock to count the lines.

    python examples/file_lock_shared_file.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import aioipc
from aioipc.sync import FileLock

WRITERS = 3
LINES = 50


def append_next(path: str, who: str) -> None:
    with open(path, "a+") as file:
        file.seek(0)
        lines = file.read().splitlines()
        last = int(lines[-1].split()[0]) if lines else 0
        file.write(f"{last + 1} written by {who}\n")


async def writer(path: str) -> None:
    lock = FileLock(path + ".lock")
    for _ in range(LINES):
        async with lock:
            append_next(path, f"pid {os.getpid()}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "shared.txt")
        procs = [await asyncio.create_subprocess_exec(sys.executable, __file__, path) for _ in range(WRITERS)]
        codes = [await proc.wait() for proc in procs]
        async with FileLock(path + ".lock", shared=True):
            with open(path) as file:
                numbers = [int(line.split()[0]) for line in file]
        print(f"{WRITERS} writers exited with {codes}; {len(numbers)} lines")
        if numbers != list(range(1, WRITERS * LINES + 1)):
            raise SystemExit("the lock let two writers in at once")
        print("numbered 1 ..", numbers[-1], "with no gap and no repeat")


if __name__ == "__main__":
    aioipc.run(writer(sys.argv[1]) if len(sys.argv) == 2 else main(), exit_quietly=True)
