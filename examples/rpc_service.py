"""A JSON-RPC service: the same code serves a unix: socket, a tcp: port, or a NATS subject.

    python examples/rpc_service.py unix:/tmp/math.sock        # serve until Ctrl+C (length-prefixed JSON)
    python examples/rpc_client.py unix:/tmp/math.sock         # call it from another terminal
    aioipc call unix:/tmp/math.sock add 1 2                   # or from the shell
    python examples/rpc_service.py nats://127.0.0.1:4222/svc.math   # over NATS: start several, they share

With ``--lines`` it speaks newline-delimited JSON, one request per line, so
``socat`` (or any JSON-RPC peer that writes lines) can call it::

    python examples/rpc_service.py unix:/tmp/math.sock --lines
    echo '{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}' | socat - UNIX-CONNECT:/tmp/math.sock

Ctrl+C or SIGTERM stops it: it stops accepting, gives running calls two
seconds, removes its socket file and exits with 128 + the signal number.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import aioipc
import aioipc.rpc


class Math:
    """Every public ``async def`` is a method clients can call."""

    async def add(self, a: float, b: float) -> float:
        return a + b

    async def divide(self, a: float, b: float) -> float:
        if b == 0:
            raise aioipc.rpc.RemoteError(-32000, "division by zero", {"dividend": a})
        return a / b

    async def slow_square(self, x: float, seconds: float = 0.1) -> float:
        await asyncio.sleep(seconds)  # calls in flight overlap: five take 0.1 s, not 0.5 s
        return x * x

    async def server_pid(self) -> int:
        return os.getpid()


async def main(address: str, lines: bool) -> int:
    options: dict[str, Any] = {"framing": "lines"} if lines else {}
    async with aioipc.graceful_shutdown(timeout=5) as sd:
        server = await aioipc.rpc.serve(address, Math(), **options)
        sd.add_hook(server.close, 2)  # stop accepting, 2 s for running calls, clean up
        print("serving on", server.address, flush=True)
        await server.serve_forever()
    return sd.exit_status


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--lines"]):
        sys.exit(f"usage: {sys.argv[0]} ADDRESS [--lines]")
    sys.exit(aioipc.run(main(sys.argv[1], lines=sys.argv[2:] == ["--lines"]), exit_quietly=True))
