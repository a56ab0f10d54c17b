"""The service of rpc_service.py over NATS: two servers share one subject, the client code is unchanged.

    nats-server -a 127.0.0.1 -p 4222 &
    python examples/rpc_nats.py nats://127.0.0.1:4222

Starts two ``rpc_service.py nats://.../svc.math`` processes (a queue group:
each request goes to one of them), runs the calls of rpc_client.py against
the same address, shows that both servers answered, then stops them.
Needs the extra ``nats`` (``pip install 'aioipc[nats]'``).
"""

from __future__ import annotations

import asyncio
import sys

from anyio.streams.buffered import BufferedByteReceiveStream
from rpc_client import SERVICE, calls

import aioipc
import aioipc.rpc


async def main(url: str) -> int:
    address = f"{url.rstrip('/')}/svc.math"
    async with aioipc.graceful_shutdown(timeout=5) as sd:
        servers = [
            await aioipc.spawn([sys.executable, SERVICE, address], channel=False, stdout=aioipc.process.PIPE)
            for _ in range(2)
        ]
        try:
            for server in servers:  # wait until each says it is serving
                assert server.stdout is not None
                line = await BufferedByteReceiveStream(server.stdout).receive_until(b"\n", 4096)
                print("service says:", line.decode())
            await calls(address)
            async with await aioipc.rpc.connect(address) as client:
                pids = await asyncio.gather(*(client.call("server_pid", timeout=5) for _ in range(40)))
            print(f"40 calls answered by {len(set(pids))} servers")
        finally:
            statuses = await aioipc.process.terminate_all(servers)
        print("servers stopped with", statuses)
    return sd.exit_status


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} nats://HOST:PORT")
    sys.exit(aioipc.run(main(sys.argv[1]), exit_quietly=True))
