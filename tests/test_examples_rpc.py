"""The rpc examples, run as a user runs them: the demo, the service stopped by a signal, the NATS tour."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from helpers import EXAMPLES, NatsServer, run_example

import aioipc
import aioipc.process

pytestmark = pytest.mark.usefixtures("example_loop")  # each example runs on both loops

CALLS = [
    "add(1, 2) = 3",
    "add(a=0.5, b=2) = 2.5",
    "five slow squares at once: [0, 1, 4, 9, 16]",
    "divide(1, 0) failed: -32000 division by zero",
    "subtract(3, 1) failed: -32601 Method not found",
]


def test_rpc_client_demo() -> None:
    assert run_example("rpc_client.py") == [
        "service says: serving on unix:TMP/math.sock",
        *CALLS,
        "service stopped with 143 - socket file left: False",
    ]


def test_rpc_nats(nats_server: NatsServer) -> None:
    address = f"{nats_server.url}/svc.math"
    assert run_example("rpc_nats.py", nats_server.url) == [
        f"service says: serving on {address}",
        f"service says: serving on {address}",
        *CALLS,
        "40 calls answered by 2 servers",
        "servers stopped with [143, 143]",
    ]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_rpc_service_stops_quietly_on_a_signal(signum: int, tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "math.sock"
    argv = [sys.executable, str(EXAMPLES / "rpc_service.py"), f"unix:{path}"]
    proc = await aioipc.spawn(argv, channel=False, stdout=aioipc.process.PIPE, stderr=aioipc.process.PIPE)
    async with proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        with anyio.fail_after(30):
            line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 4096)
            assert line.decode() == f"serving on unix:{path}"
            async with await aioipc.rpc.connect(f"unix:{path}") as client:
                assert await client.call("add", 2, 3) == 5
            aioipc.signals.send(proc.pid, signum)
            assert await proc.wait() == 128 + signum
            errors = b"".join([chunk async for chunk in proc.stderr])
    assert errors == b""  # no traceback
    assert not path.exists()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
async def test_rpc_service_in_json_lines_answers_socat(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "math.sock"
    argv = [sys.executable, str(EXAMPLES / "rpc_service.py"), f"unix:{path}", "--lines"]
    async with await aioipc.spawn(argv, channel=False, stdout=aioipc.process.PIPE) as proc:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 4096)
            # the one-liner of the example's docstring, and a line of garbage before it
            request = b'not json\n{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}\n'
            socat = await asyncio.create_subprocess_exec(
                "socat", "-t", "5", "-", f"UNIX-CONNECT:{path}",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await socat.communicate(request)
            assert socat.returncode == 0
            garbage, answer = (json.loads(line) for line in out.splitlines())
            parse_error = {"code": -32700, "message": "Parse error"}
            assert garbage == {"jsonrpc": "2.0", "error": parse_error, "id": None}
            assert answer == {"jsonrpc": "2.0", "result": 3, "id": 1}
            async with await aioipc.rpc.connect(f"unix:{path}", framing="lines") as client:
                assert await client.call("add", a=2, b=3) == 5
