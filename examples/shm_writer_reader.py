"""A writer and a reader sharing a memory segment, handing it over with semaphores.

The classic shared-memory example, without its ``sleep(5)``: the writer
puts a message in the segment and releases "written"; the reader (a child
process) waits on "written", prints the message, and releases "read" so the
writer may reuse the memory. An empty message ends it.

    python examples/shm_writer_reader.py
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from contextlib import aclosing

import aioipc
from aioipc.shm import SharedMemory
from aioipc.sync import Semaphore

SIZE = 4096
LENGTH = struct.Struct("<I")


async def reader(name: str) -> None:
    async with (
        await SharedMemory.attach(name) as shm,
        aclosing(await Semaphore.open(name + "-written")) as written,
        aclosing(await Semaphore.open(name + "-read")) as read,
    ):
        while True:
            await written.acquire()
            (size,) = LENGTH.unpack_from(shm.buf)
            message = bytes(shm.buf[LENGTH.size : LENGTH.size + size]).decode()
            read.release()
            if not message:
                break
            print("reader got:", message, flush=True)


async def writer() -> None:
    name = f"/aioipc-example-{os.getpid()}"
    async with (
        await SharedMemory.create(name, SIZE) as shm,
        aclosing(await Semaphore.open(name + "-written", create=True, initial=0)) as written,
        aclosing(await Semaphore.open(name + "-read", create=True, initial=0)) as read,
    ):
        child = await asyncio.create_subprocess_exec(sys.executable, __file__, name)
        for text in ("hello", "from the writer", "through shared memory", ""):
            data = text.encode()
            LENGTH.pack_into(shm.buf, 0, len(data))
            shm.buf[LENGTH.size : LENGTH.size + len(data)] = data
            written.release()
            await read.acquire(timeout=30)  # the reader is done with the memory
        print("reader exited with", await child.wait())


if __name__ == "__main__":
    aioipc.run(reader(sys.argv[1]) if len(sys.argv) == 2 else writer(), exit_quietly=True)
