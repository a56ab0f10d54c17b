"""A parent and a child process talking over two anonymous pipes.

The classic pipe()/fork() example, async: the parent sends numbered
requests, the child answers each one, then both close cleanly.

    python examples/pipe_parent_child.py
"""

from __future__ import annotations

import asyncio
import sys

import aioipc
import aioipc.pipes


async def child(read_fd: int, write_fd: int) -> None:
    rx = aioipc.framed(aioipc.pipes.from_fd(read_fd, "r"))
    tx = aioipc.framed(aioipc.pipes.from_fd(write_fd, "w"))
    async with rx, tx:
        async for request in rx:
            await tx.send(b"child got " + request)


async def parent() -> None:
    to_child_r, to_child_w = aioipc.pipe()
    from_child_r, from_child_w = aioipc.pipe()
    fds = [to_child_r.fileno(), from_child_w.fileno()]
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, *map(str, fds), pass_fds=fds)
    await to_child_r.aclose()  # the child has its own copies now
    await from_child_w.aclose()
    async with aioipc.framed(to_child_w) as tx, aioipc.framed(from_child_r) as rx:
        for i in range(3):
            await tx.send(b"request %d" % i)
            print((await rx.receive()).decode())
        await tx.aclose()  # EOF: the child's `async for` ends
    print("child exited with", await proc.wait())


if __name__ == "__main__":
    if len(sys.argv) == 3:
        aioipc.run(child(int(sys.argv[1]), int(sys.argv[2])), exit_quietly=True)
    else:
        aioipc.run(parent(), exit_quietly=True)
