"""Know who is connecting: the kernel's (pid, uid, gid) of the peer of a Unix socket.

The server prints each client's credentials, as the kernel recorded them
at connect time (``SO_PEERCRED``; they cannot be forged by the client),
and accepts only users listed in ``allowed_uids``: others are closed at
once. The demo runs two clients as child processes and checks that the
pid the server sees is the child's.

    python examples/peer_credentials.py
"""

from __future__ import annotations

import asyncio
import os
import sys

import aioipc


async def whoami(msgs: aioipc.MessageStream) -> None:
    pid, uid, gid = msgs.extra(aioipc.PeerCredentials)
    print(f"server: connection from pid {pid}, uid {uid}, gid {gid}", flush=True)
    await msgs.send(b"you are pid %d" % pid)


async def client(address: str) -> None:
    async with await aioipc.connect(address) as msgs:
        server = msgs.extra(aioipc.PeerCredentials)
        print(
            f"client {os.getpid()}: {(await msgs.receive()).decode()}; server is pid {server.pid}", flush=True
        )


async def main() -> None:
    address = f"unix:@aioipc-example-{os.getpid()}"  # abstract name: no file to clean up
    async with await aioipc.serve(address, whoami, allowed_uids=[os.getuid()]):
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(sys.executable, __file__, address)
            print(f"(started client pid {proc.pid})", flush=True)
            assert await asyncio.wait_for(proc.wait(), 30) == 0


if __name__ == "__main__":
    if len(sys.argv) == 2:
        aioipc.run(client(sys.argv[1]), exit_quietly=True)
    else:
        aioipc.run(main(), exit_quietly=True)
