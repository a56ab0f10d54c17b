"""aioipc.rpc calls and methods that wait: callers that give up while sends wait for room, and a
server closed while its methods run, which waits for their cleanup (within a bound)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest
from helpers import service, shell_kill

import aioipc
import aioipc.rpc

CLEANUP_SERVICE = """
    import asyncio, sys
    import aioipc, aioipc.rpc, aioipc.rpc._stream

    aioipc.rpc._stream.CLEANUP_TIMEOUT = float(sys.argv[3])
    cleaned = []

    async def hold(name, seconds):
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(seconds)  # a cleanup that waits
            cleaned.append(name)

    async def stubborn():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # it ignores the cancellation: only a second one ends it
        await asyncio.Event().wait()

    async def echo(value):
        return value

    async def main(address):
        server = await aioipc.rpc.serve(address, {"hold": hold, "stubborn": stubborn, "echo": echo})
        async with aioipc.graceful_shutdown(timeout=30), server:
            print(server.address, flush=True)
            await server.serve_forever()
        print("closed after cleaning", sorted(cleaned), flush=True)

    aioipc.run(main(sys.argv[2]), loop=sys.argv[1])
"""


@pytest.mark.parametrize("stubborn", [False, True])
async def test_a_closing_server_waits_for_methods_to_clean_up(
    stubborn: bool, tmp_path: Path, tmp_ipc_dir: Path
) -> None:
    cleanup_timeout = "0.3" if stubborn else "30"
    async with service(tmp_path, CLEANUP_SERVICE, f"unix:{tmp_ipc_dir}/rpc.sock", cleanup_timeout) as child:
        with anyio.fail_after(30):
            address = (await child.line()).strip()
            async with await aioipc.rpc.connect(address) as one, await aioipc.rpc.connect(address) as two:
                calls = [
                    asyncio.ensure_future(one.call("hold", "a", 0.1)),
                    asyncio.ensure_future(one.call("hold", "b", 0)),
                    asyncio.ensure_future(two.call("hold", "c", 0.1)),
                ]
                if stubborn:  # it holds the close for the cleanup timeout only
                    calls.append(asyncio.ensure_future(two.call("stubborn")))
                assert await one.call("echo", 1) == await two.call("echo", 2) - 1  # all are running
                await shell_kill("TERM", child.pid)  # the server closes: every method is cancelled
                # when the close returned, every cleanup had ended (a server's cancellation,
                # delivered again at each wait, used to cut the wait for them short)
                assert await child.line() == "closed after cleaning ['a', 'b', 'c']"
                for call in calls:
                    with pytest.raises(anyio.BrokenResourceError):
                        await call
            assert await child.proc.wait() == 0


async def test_callers_that_give_up_while_sends_wait_for_room_leave_the_connection_usable(
    tmp_path: Path, tmp_ipc_dir: Path
) -> None:
    # sends of 256 KiB wait for room: the other callers wait for their turn to send, and the
    # short timeouts cancel some of them while they wait, some while they send
    payload = "x" * 256 * 1024
    async with service(tmp_path, CLEANUP_SERVICE, f"unix:{tmp_ipc_dir}/rpc.sock", "30") as child:
        with anyio.fail_after(30):
            address = (await child.line()).strip()
        async with await aioipc.rpc.connect(address) as client:
            outcomes: list[str] = []

            async def caller(i: int) -> None:
                timeout = 0.002 * (i % 4) if i % 4 else None
                for j in range(4):
                    try:
                        assert await client.call("echo", [i, j, payload], timeout=timeout) == [i, j, payload]
                        outcomes.append("answered")
                    except TimeoutError:
                        outcomes.append("timed out")

            with anyio.fail_after(30):
                await asyncio.gather(*(caller(i) for i in range(16)))
                assert len(outcomes) == 16 * 4
                assert outcomes.count("answered") >= 4 * 4  # every call without a timeout
                assert "timed out" in outcomes
                assert await client.call("echo", [payload]) == [payload]  # every send's turn came
                assert await client.call("echo", 3) == 3
        await shell_kill("TERM", child.pid)
        with anyio.fail_after(30):
            assert await child.line() == "closed after cleaning []"
            assert await child.proc.wait() == 0
