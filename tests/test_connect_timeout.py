"""``connect(address, timeout=T)`` waits for the other side to exist, for every scheme."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from helpers import service

import aioipc

SERVER = """
import sys
import aioipc

async def main(address):
    async def echo(msgs):
        async for m in msgs:
            await msgs.send(m)

    async def take_one(msgs):
        print(await msgs.receive(), flush=True)

    one_way = address.startswith(("fifo:", "mq:", "sysvmq:"))
    async with await aioipc.serve(address, take_one if one_way else echo):
        print("serving", flush=True)
        await anyio.sleep(30)

import anyio
aioipc.run(main(sys.argv[2]), loop=sys.argv[1], exit_quietly=True)
"""


IDS = ["unix", "abstract", "seqpacket", "fifo", "mq", "sysvmq", "shm"]


def addresses(tmp: Path, name: str) -> list[str]:
    key = int.from_bytes(os.urandom(3), "big") + 0x5000_0000
    return [
        f"unix:{tmp}/late.sock",
        f"unix:@{name}",
        f"unix+seqpacket:{tmp}/late-seq.sock",
        f"fifo:{tmp}/late.fifo",
        f"mq:/{name}",
        f"sysvmq:{key:#x}",
        f"shm:/{name}",
    ]


@pytest.mark.parametrize(
    "index", range(7), ids=["unix", "abstract", "seqpacket", "fifo", "mq", "sysvmq", "shm"]
)
async def test_connect_waits_for_a_server_that_starts_later(
    index: int, tmp_ipc_dir: Path, unique_name: str, tmp_path: Path
) -> None:
    address = addresses(tmp_ipc_dir, unique_name)[index]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            connected: list[aioipc.MessageStream] = []
            done = anyio.Event()

            async def client() -> None:
                connected.append(await aioipc.connect(address, timeout=20))
                done.set()

            tg.start_soon(client)
            await anyio.lowlevel.checkpoint()  # the client is already waiting when the server starts
            async with service(tmp_path, SERVER, address) as server:
                await server.expect("serving")
                await done.wait()
                async with connected[0] as msgs:
                    await msgs.send(b"ping")
                    if address.startswith(("fifo:", "mq:", "sysvmq:")):
                        assert await server.line() == "b'ping'"
                    else:
                        assert await msgs.receive() == b"ping"


@pytest.mark.parametrize(
    "index", range(7), ids=["unix", "abstract", "seqpacket", "fifo", "mq", "sysvmq", "shm"]
)
async def test_connect_gives_up_with_a_timeout_error_naming_the_address(
    index: int, tmp_ipc_dir: Path, unique_name: str
) -> None:
    address = addresses(tmp_ipc_dir, unique_name)[index]
    with anyio.fail_after(10), pytest.raises(TimeoutError, match="nothing answered at") as info:
        await aioipc.connect(address, timeout=0.2)
    assert str(aioipc.parse_address(address)) in str(info.value)
