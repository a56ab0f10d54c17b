"""A TCP echo server and client, the classic socket example made async.

    python examples/tcp_echo.py server 127.0.0.1:8007        # serve until Ctrl+C
    python examples/tcp_echo.py client 127.0.0.1:8007 hi yo  # send each word, print the echo
    python examples/tcp_echo.py                              # demo: both, on a free port

Messages are length-prefixed frames (aioipc's default), so each word comes
back whole however TCP splits the bytes.
"""

from __future__ import annotations

import asyncio
import sys

import aioipc


async def echo(msgs: aioipc.MessageStream) -> None:
    async for message in msgs:
        await msgs.send(message)


async def server(where: str) -> None:
    async with await aioipc.serve(f"tcp:{where}", echo) as srv:
        print("echo server on", srv.address, flush=True)
        await srv.serve_forever()


async def client(address: str, words: list[str]) -> None:
    async with await aioipc.connect(address, timeout=10) as msgs:
        for word in words:
            await msgs.send(word.encode())
            print("echo:", (await msgs.receive()).decode())


async def demo() -> None:
    async with await aioipc.serve("tcp:127.0.0.1:0", echo) as srv:
        print("echo server on", srv.address)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "client", srv.address.removeprefix("tcp:"), "hello", "async", "world"
        )
        print("client exited with", await asyncio.wait_for(proc.wait(), 30))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "client":
        aioipc.run(client(f"tcp:{sys.argv[2]}", sys.argv[3:]), exit_quietly=True)
    elif len(sys.argv) == 3 and sys.argv[1] == "server":
        aioipc.run(server(sys.argv[2]), exit_quietly=True)
    else:
        aioipc.run(demo(), exit_quietly=True)
