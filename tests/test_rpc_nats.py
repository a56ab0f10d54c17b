"""aioipc.rpc over NATS, on a real nats-server: queue groups, plain nats-py peers, a dying server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from helpers import NatsServer, Service, service

import aioipc
import aioipc.rpc

SERVICE = """
    import asyncio, os, sys
    import anyio
    import aioipc, aioipc.rpc

    release = asyncio.Event()

    async def add(a, b):
        return a + b

    async def big(size):
        return "x" * size

    async def whoami():
        return os.getpid()

    async def hold():
        await release.wait()

    async def main(address, options):
        handlers = {"add": add, "big": big, "whoami": whoami, "hold": hold}
        server = await aioipc.rpc.serve(address, handlers, **options)
        async with aioipc.graceful_shutdown(timeout=5), server:
            print("serving", flush=True)
            try:
                await server.serve_forever()
            except anyio.BrokenResourceError as exc:
                print("lost:", exc, flush=True)

    aioipc.run(main(sys.argv[2], eval(sys.argv[3])), loop=sys.argv[1])
"""


@asynccontextmanager
async def rpc_server(tmp_path: Path, address: str, **options: Any) -> AsyncIterator[Service]:
    async with service(tmp_path, SERVICE, address, repr(options)) as child:
        with anyio.fail_after(30):
            await child.expect("serving")
        yield child


async def test_calls_and_errors_over_nats(nats_server: NatsServer, tmp_path: Path) -> None:
    address = f"{nats_server.url}/svc.math"
    async with rpc_server(tmp_path, address), await aioipc.rpc.connect(address) as client:
        with anyio.fail_after(20):
            assert await client.call("add", 1, 2, timeout=5) == 3
            assert await client.call("add", a=[1], b=[2]) == [1, 2]
            results = await asyncio.gather(*(client.call("add", i, 1) for i in range(50)))
            assert results == [i + 1 for i in range(50)]
            with pytest.raises(aioipc.rpc.RemoteError) as missing:
                await client.call("nope")
            assert missing.value.code == -32601
            await client.notify("add", 1, 2)
            with pytest.raises(aioipc.rpc.RemoteError) as too_large:  # over the NATS server's max_payload
                await client.call("big", 2 * 2**20)
            assert too_large.value.code == -32603
            assert await client.call("add", 2, 2) == 4


async def test_a_plain_nats_client_calls_an_aioipc_server(nats_server: NatsServer, tmp_path: Path) -> None:
    async with rpc_server(tmp_path, f"{nats_server.url}/svc.math"):
        nc = await nats.connect(nats_server.url)
        try:
            request = {"jsonrpc": "2.0", "id": "q1", "method": "add", "params": [40, 2]}
            reply = await nc.request("svc.math", json.dumps(request).encode(), timeout=10)
            assert json.loads(reply.data) == {"jsonrpc": "2.0", "result": 42, "id": "q1"}
            reply = await nc.request("svc.math", b"not json", timeout=10)
            assert json.loads(reply.data)["error"]["code"] == -32700
        finally:
            await nc.close()


PLAIN_RESPONDER = """
    import asyncio, json, sys
    import nats

    async def main(url):
        nc = await nats.connect(url)

        async def answer(msg):
            request = json.loads(msg.data)
            if request["method"] == "mul":
                body = {"jsonrpc": "2.0", "result": request["params"][0] * request["params"][1]}
            else:
                body = {"jsonrpc": "2.0", "error": {"code": -32601, "message": "no " + request["method"]}}
            await msg.respond(json.dumps({**body, "id": request["id"]}).encode())

        await nc.subscribe("plain.svc", cb=answer)
        await nc.flush()
        print("serving", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[2]))
"""


async def test_an_aioipc_client_calls_a_plain_nats_responder(nats_server: NatsServer, tmp_path: Path) -> None:
    async with service(tmp_path, PLAIN_RESPONDER, nats_server.url) as child:
        with anyio.fail_after(30):
            await child.expect("serving")
        async with await aioipc.rpc.connect(f"{nats_server.url}/plain.svc") as client:
            with anyio.fail_after(20):
                assert await client.call("mul", 6, 7) == 42
                with pytest.raises(aioipc.rpc.RemoteError) as missing:
                    await client.call("div", 1, 2)
                assert (missing.value.code, missing.value.message) == (-32601, "no div")


async def test_two_servers_share_the_load_in_a_queue_group(nats_server: NatsServer, tmp_path: Path) -> None:
    address = f"{nats_server.url}/svc.shared"
    async with (
        rpc_server(tmp_path, address) as first,
        rpc_server(tmp_path, address) as second,
        await aioipc.rpc.connect(address) as client,
    ):
        with anyio.fail_after(20):
            pids = await asyncio.gather(*(client.call("whoami") for _ in range(60)))
        # each request went to one server only, and both servers took some
        assert set(pids) == {first.pid, second.pid}


async def test_no_server_on_the_subject_is_refused_at_once(nats_server: NatsServer) -> None:
    async with await aioipc.rpc.connect(f"{nats_server.url}/svc.nobody") as client:
        with anyio.fail_after(10), pytest.raises(ConnectionRefusedError):
            await client.call("add", 1, 2)


async def test_a_dying_nats_server_fails_calls_and_servers_never_hangs(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    address = f"{nats_server.url}/svc.doomed"
    async with (
        rpc_server(tmp_path, address, allow_reconnect=False) as child,
        await aioipc.rpc.connect(address) as client,
    ):
        with anyio.fail_after(20):
            assert await client.call("add", 1, 1) == 2
            pending = asyncio.ensure_future(client.call("hold"))
            nats_server.kill()
            with pytest.raises(anyio.BrokenResourceError, match="NATS server"):
                await pending
            with pytest.raises(anyio.BrokenResourceError):
                await client.call("add", 1, 1)
            line = await child.line()
            assert line.startswith("lost: lost the connection to the NATS server"), line
            assert await child.proc.wait() == 0


WITHOUT_NATS = """
import sys
sys.modules["nats"] = None  # as if the extra were not installed
import aioipc, aioipc.rpc
try:
    aioipc.run(aioipc.rpc.connect("nats://127.0.0.1:4222/svc.math"))
except ImportError as exc:
    print(exc)
"""


def test_without_the_extra_aioipc_imports_and_nats_addresses_name_it() -> None:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_NATS], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == "nats:// addresses need nats-py: pip install 'aioipc[nats]'\n"
