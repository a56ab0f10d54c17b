"""Pass an open file descriptor to another process (SCM_RIGHTS).

The parent opens a file the child may not be able to open itself, and
hands the child the open descriptor over a Unix seqpacket socketpair; the
child reads through it and answers. The receiver owns the fds it gets
(close-on-exec, closed by it); too many fds raise ``FdsTruncated`` and
are closed, never leaked.

    python examples/fd_passing.py
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile

import aioipc
import aioipc.sockets


async def child(fd: int) -> None:
    async with aioipc.sockets.from_socket(socket.socket(fileno=fd)) as channel:
        note, fds = await channel.receive_fds(max_fds=1)
        with open(fds[0], "rb") as f:  # we own the received fd: closing the file closes it
            text = f.read()
        await channel.send(b"child read %d bytes through the fd (%s): %s" % (len(text), note, text.strip()))


async def parent() -> None:
    ours, theirs = aioipc.sockets.socketpair("seqpacket")
    async with ours:
        fd = theirs.fileno()
        proc = await asyncio.create_subprocess_exec(sys.executable, __file__, str(fd), pass_fds=[fd])
        await theirs.aclose()  # the child has its own copy
        with tempfile.TemporaryFile() as secret:
            secret.write(b"a file with no name, reachable only through its descriptor\n")
            secret.seek(0)
            await ours.send_fds(b"temporary file", [secret.fileno()])
        print((await asyncio.wait_for(ours.receive(), 30)).decode())
    print("child exited with", await proc.wait())


if __name__ == "__main__":
    if len(sys.argv) == 2:
        aioipc.run(child(int(sys.argv[1])), exit_quietly=True)
    else:
        aioipc.run(parent(), exit_quietly=True)
