"""Call the JSON-RPC service of rpc_service.py: many calls in flight on one connection, errors with codes.

    python examples/rpc_client.py unix:/tmp/math.sock    # a running rpc_service.py (or a nats:// address)
    python examples/rpc_client.py                        # demo: start the service, call it, stop it

From the shell, with the service started with ``--lines``, socat makes the same call::

    echo '{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}' | socat - UNIX-CONNECT:/tmp/math.sock
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile

from anyio.streams.buffered import BufferedByteReceiveStream

import aioipc
import aioipc.rpc


async def calls(address: str) -> None:
    async with await aioipc.rpc.connect(address) as client:
        print("add(1, 2) =", await client.call("add", 1, 2, timeout=5))
        print("add(a=0.5, b=2) =", await client.call("add", a=0.5, b=2, timeout=5))
        squares = await asyncio.gather(*(client.call("slow_square", x, timeout=5) for x in range(5)))
        print("five slow squares at once:", squares)
        await client.notify("add", 0, 0)  # a notification: no reply is awaited
        for method, args in (("divide", (1, 0)), ("subtract", (3, 1))):
            try:
                await client.call(method, *args, timeout=5)
            except aioipc.rpc.RemoteError as exc:
                print(f"{method}{args} failed: {exc.code} {exc.message}")


async def client(address: str) -> int:
    async with aioipc.graceful_shutdown(timeout=5) as sd:
        await calls(address)
    return sd.exit_status


SERVICE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rpc_service.py")


def exists(path: str) -> bool:
    return os.path.exists(path)


async def demo() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix:{tmp}/math.sock"
        async with aioipc.graceful_shutdown(timeout=5) as sd:
            proc = await aioipc.spawn(
                [sys.executable, SERVICE, address],
                channel=False,
                stdout=aioipc.process.PIPE,
            )
            async with proc:  # leaving the block stops the service (SIGTERM) if it still runs
                assert proc.stdout is not None
                line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 4096)
                print("service says:", line.decode().replace(tmp, "TMP"))
                await calls(address)
                aioipc.signals.send(proc.pid, signal.SIGTERM)
                status = await proc.wait()
            print("service stopped with", status, "- socket file left:", exists(f"{tmp}/math.sock"))
    return sd.exit_status


if __name__ == "__main__":
    sys.exit(aioipc.run(client(sys.argv[1]) if len(sys.argv) == 2 else demo(), exit_quietly=True))
