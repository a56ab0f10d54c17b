"""A Unix-socket echo server that removes its socket file when stopped (Ctrl+C or SIGTERM).

    python examples/unix_echo_server.py /tmp/echo.sock   # serve until Ctrl+C
    socat - UNIX-CONNECT:/tmp/echo.sock                  # type lines, they come back
    python examples/unix_echo_server.py                  # demo: start it, talk, Ctrl+C it

The server speaks raw bytes (``framing=None``), so ``socat`` or ``nc -U`` can
talk to it. The socket file is 0600 (only you can connect) and is removed
when the server stops; a file left by a crashed server is replaced at the
next start, and a running server is never stolen (``AddressInUse``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile

import aioipc
import aioipc.shutdown


def exists(path: str) -> bool:
    return os.path.exists(path)


async def echo(stream: aioipc.ByteStream) -> None:
    async for chunk in stream:
        await stream.send(chunk)


async def server(path: str) -> int:
    async with aioipc.shutdown.graceful_shutdown(timeout=5) as sd:
        srv = await aioipc.serve(f"unix:{path}", echo, framing=None)
        sd.add_hook(srv.close, 2)  # stop accepting, 2 s for clients to finish, remove the file
        print("serving on", srv.address, flush=True)
        await srv.serve_forever()
    print("stopped; socket file removed:", not exists(path), flush=True)
    return 0


async def demo() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "echo.sock")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, path, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        print("server says:", (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip())
        async with await aioipc.connect(f"unix:{path}", framing=None) as stream:
            await stream.send(b"hello over a unix socket\n")
            print("echo:", (await stream.receive()).decode().strip())
        proc.send_signal(signal.SIGINT)  # as Ctrl+C would
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        print("server says:", out.decode().strip())
        print("socket file still there:", exists(path))


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(aioipc.run(server(sys.argv[1]), exit_quietly=True))
    aioipc.run(demo(), exit_quietly=True)
