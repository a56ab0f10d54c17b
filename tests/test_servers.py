"""Servers against hostile and careless peers, between real processes: shell and socat
senders, clients that leave, many concurrent starts on one path, idle clients."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from helpers import keep_busy, loop_name, run_tool, until

import aioipc
import aioipc.sockets

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/socat"), reason="socat is not installed")


async def _echo(msgs: Any) -> None:
    async for message in msgs:
        await msgs.send(message)


async def _still_serving(server: aioipc.Server) -> None:
    """A new client of ``server`` gets its echo, and the server says it is serving."""
    async with await aioipc.connect(server.address) as client:
        with anyio.fail_after(10):
            await client.send(b"still there?")
            assert await client.receive() == b"still there?"
    assert server.is_serving()


# -- one sender never kills a single-handler server ---------------------------------------


async def test_dgram_server_survives_an_unnamed_sender(
    tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_ipc_dir / "d.sock"
    async with await aioipc.serve(f"unix+dgram:{path}", _echo) as server:
        for _ in range(2):  # socat sends from an unnamed socket: there is nobody to answer
            await run_tool("sh", "-c", 'echo hi | socat - "UNIX-SENDTO:$1"', "sh", str(path))
        await _still_serving(server)
    assert "dropped a reply" in caplog.text


async def test_dgram_server_survives_a_client_that_left_before_its_reply(
    tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_ipc_dir / "d.sock"
    gone = tmp_ipc_dir / "gone.sock"
    leave = anyio.Event()

    async def slow_echo(msgs: Any) -> None:
        async for message in msgs:
            if message == b"wait for me":
                await leave.wait()
            await msgs.send(message)

    async with await aioipc.serve(f"unix+dgram:{path}", slow_echo) as server:
        # A named client in another process sends, then exits before the reply.
        client = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(sys.argv[1])
            s.sendto(b"wait for me", sys.argv[2])
        """
        await run_tool(
            "sh",
            "-c",
            '"$1" -c "$2" "$3" "$4"',
            "sh",
            sys.executable,
            textwrap.dedent(client),
            str(gone),
            str(path),
        )
        leave.set()  # the reply goes to a socket file nobody reads: ECONNREFUSED
        await _still_serving(server)
    assert "dropped a reply" in caplog.text


async def test_fifo_server_survives_unframed_shell_writers(
    tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_ipc_dir / "f.fifo"
    received: list[bytes] = []

    async def collect(msgs: Any) -> None:
        async for message in msgs:
            received.append(message)

    async with await aioipc.serve(f"fifo:{path}", collect) as server:
        for _ in range(3):  # none blocks: the server keeps its reader through bad frames
            await run_tool("sh", "-c", 'echo hi > "$1"', "sh", str(path))
        # The third echo is shorter than a header: it spoils (at most) what is read with the
        # next bytes. A framed writer then gets through within a few tries.
        for _ in range(3):
            async with await aioipc.connect(server.address) as writer:
                await writer.send(b"framed")
            with anyio.move_on_after(2):
                await until(lambda: b"framed" in received)
            if received:
                break
        assert received == [b"framed"]
        assert server.is_serving()
    assert "discarded a bad frame" in caplog.text


async def test_single_handler_server_closes_when_its_handler_ends(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "f.fifo"

    async def take_one(msgs: Any) -> None:
        await msgs.receive()

    server = await aioipc.serve(f"fifo:{path}", take_one)
    async with await aioipc.connect(server.address) as writer:
        await writer.send(b"one")
    with anyio.fail_after(10):
        await server.serve_forever()
    assert not server.is_serving()
    assert not path.exists()
    await server.close()


async def test_a_server_closed_at_once_still_runs_its_handler_to_its_cleanup(tmp_ipc_dir: Path) -> None:
    """close() before the handler's first step: it is cancelled once started, never before
    (a task cancelled before its first step would never close its stream)."""
    path = tmp_ipc_dir / "f.fifo"
    seen: list[str] = []

    async def handler(msgs: Any) -> None:
        seen.append("started")
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    server = await aioipc.serve(f"fifo:{path}", handler)
    with anyio.fail_after(10):
        await server.close()
    assert seen == ["started", "cancelled"]
    assert server.connections == 0
    assert not path.exists()


async def test_close_cancels_a_handler_again_once_it_leaves_its_shield(tmp_ipc_dir: Path) -> None:
    """A cancelled handler inside a shielded scope is left alone there, and cancelled again
    when it waits outside it (or close() would never return)."""
    shielded_steps: list[int] = []

    async def handler(msgs: Any) -> None:
        await msgs.receive()
        await msgs.send(b"ready")
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for step in range(3):
                    await anyio.lowlevel.checkpoint()
                    shielded_steps.append(step)
            await anyio.sleep_forever()

    server = await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", handler)
    async with await aioipc.connect(server.address) as client:
        with anyio.fail_after(10):
            await client.send(b"go")
            assert await client.receive() == b"ready"
            await server.close()
            with pytest.raises(anyio.EndOfStream):
                await client.receive()
    assert shielded_steps == [0, 1, 2]
    assert server.connections == 0


# -- bind without a race --------------------------------------------------------------------

_RACER = """
import asyncio, sys, aioipc

async def main(directory, rounds):
    async def echo(msgs):
        async for m in msgs:
            await msgs.send(m)

    won = []
    await asyncio.to_thread(sys.stdin.readline)  # every racer starts at once
    for i in range(rounds):  # each round a new path, raced by every process
        try:
            won.append((i, await aioipc.serve(f"unix:{directory}/race{i}.sock", echo)))
        except aioipc.AddressInUse:
            pass
    print(" ".join(str(i) for i, _ in won), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # a winner serves until told to stop
    for _, server in won:
        await server.close()

aioipc.run(main(sys.argv[2], int(sys.argv[3])), loop=sys.argv[1])
"""


def _socket_files(directory: Path) -> list[Path]:
    return list(directory.glob("*.sock"))


async def test_concurrent_starts_on_one_path_elect_exactly_one_server(tmp_ipc_dir: Path) -> None:
    rounds, racers = 25, 4  # 100 starts
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _RACER, loop_name(), str(tmp_ipc_dir), str(rounds),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        for _ in range(racers)
    ]  # fmt: skip
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        wins: list[int] = []
        with anyio.fail_after(60):
            for proc in procs:
                assert proc.stdout is not None
                wins += map(int, (await proc.stdout.readline()).split())
        assert sorted(wins) == list(range(rounds)), "each path has exactly one winner"
        # No winner's socket file was unlinked: every path still reaches a live server.
        for i in range(rounds):
            async with await aioipc.connect(f"unix:{tmp_ipc_dir}/race{i}.sock") as msgs:
                with anyio.fail_after(10):
                    await msgs.send(b"who")
                    assert await msgs.receive() == b"who"
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
        with anyio.fail_after(30):
            for proc in procs:
                assert await proc.wait() == 0
    assert not _socket_files(tmp_ipc_dir), "every winner removed its own file"


# -- idle_timeout ---------------------------------------------------------------------------

_IDLE_CLIENTS = """
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)
print("connected", flush=True)
sys.stdin.readline()
"""


@asynccontextmanager
async def idle_clients(server: aioipc.Server, path: Path, count: int) -> AsyncIterator[None]:
    """``count`` clients in another process that connect to ``path`` and send nothing until the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _IDLE_CLIENTS,
        str(path),
        str(count),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        with anyio.fail_after(10):
            assert await proc.stdout.readline() == b"connected\n"
            await until(lambda: server.connections >= count)
        yield
    finally:
        proc.stdin.close()
        with anyio.fail_after(10):
            await proc.wait()


async def test_idle_clients_cannot_hold_every_slot(
    tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "aioipc")
    path = tmp_ipc_dir / "s.sock"
    async with (
        await aioipc.serve(f"unix:{path}", _echo, max_connections=5, idle_timeout=0.3) as server,
        idle_clients(server, path, 5),
        await aioipc.connect(server.address) as late,
    ):
        with anyio.fail_after(10):  # served once the idle ones are closed
            await late.send(b"let me in")
            assert await late.receive() == b"let me in"
            await keep_busy(late)  # traffic keeps a connection open past the timeout
    assert caplog.text.count("idle_timeout") == 5


async def test_idle_timeout_must_be_positive(tmp_ipc_dir: Path) -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", _echo, idle_timeout=0)
    assert not (tmp_ipc_dir / "s.sock").exists()


async def test_a_server_serves_a_socket_it_did_not_bind(tmp_ipc_dir: Path) -> None:
    """Socket activation: a listening socket handed over is served as is."""
    from aioipc.sockets._server import Listening, serve_listener

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_ipc_dir / "given.sock"))
    sock.listen()
    server = serve_listener(
        Listening(sock, f"unix:{tmp_ipc_dir}/given.sock"), _echo, framing="length", max_size=1024
    )
    async with server, await aioipc.connect(server.address) as msgs:
        with anyio.fail_after(10):
            await msgs.send(b"activated")
            assert await msgs.receive() == b"activated"
    assert (tmp_ipc_dir / "given.sock").exists()  # not ours to remove
    os.unlink(tmp_ipc_dir / "given.sock")


# -- send_fds on the default framed unix stream ---------------------------------------------

_FD_SENDER = """
import os, sys, tempfile, aioipc

async def main(address):
    files = []
    for text in (b"one", b"two", b"three"):
        f = tempfile.TemporaryFile()
        f.write(text)
        f.seek(0)
        files.append(f)
    async with await aioipc.connect(address) as msgs:
        for round in range(20):  # bursts: plain and fd-carrying frames share reads
            await msgs.send(b"plain")
            await msgs.send_fds(b"one", [files[0].fileno()])
            await msgs.send_fds(b"two+three", [files[1].fileno(), files[2].fileno()])
            await msgs.send(b"x" * 100_000)  # spans many reads
            await msgs.send_fds(b"y" * 100_000, [files[0].fileno()])
        await msgs.send(b"done")
        data, fds = await msgs.receive_fds()
        with open(fds[0], "rb") as f:
            print(data.decode(), f.read().decode(), flush=True)

aioipc.run(main(sys.argv[2]), loop=sys.argv[1])
"""


async def test_fds_travel_with_their_frame_on_the_default_unix_stream(tmp_ipc_dir: Path) -> None:
    seen: list[tuple[bytes, list[bytes]]] = []
    finished = anyio.Event()

    async def handler(msgs: Any) -> None:
        while True:
            message, fds = await msgs.receive_fds()
            contents = []
            for fd in fds:
                with open(fd, "rb") as f:
                    contents.append(f.read())  # duplicates share the offset: only the first read has it
            seen.append((message[:10], contents))
            if message == b"done":
                break
        read, write = os.pipe()
        os.write(write, b"from the server")
        os.close(write)
        await msgs.send_fds(b"reply", [read])
        os.close(read)
        finished.set()
        await msgs.receive()  # until the client closes

    async with await aioipc.serve(f"unix:{tmp_ipc_dir}/fds.sock", handler) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _FD_SENDER, loop_name(), server.address, stdout=subprocess.PIPE
        )
        with anyio.fail_after(30):
            out, _ = await proc.communicate()
            await finished.wait()
    assert proc.returncode == 0
    assert out == b"reply from the server\n"
    assert len(seen) == 101
    for i in range(20):
        chunk = seen[i * 5 : i * 5 + 5]
        assert [message for message, _ in chunk] == [b"plain", b"one", b"two+three", b"x" * 10, b"y" * 10]
        assert [len(contents) for _, contents in chunk] == [0, 1, 2, 0, 1]
    assert [contents for _, contents in seen[:3]] == [[], [b"one"], [b"two", b"three"]]


async def test_a_handler_that_polls_does_not_keep_a_silent_client_alive(
    tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A receive cancelled by the handler's own short timeout is no traffic."""
    caplog.set_level(logging.WARNING, "aioipc")
    path = tmp_ipc_dir / "s.sock"
    polls = 0

    async def poller(msgs: Any) -> None:
        nonlocal polls
        while True:
            with anyio.move_on_after(0.05):
                await msgs.receive()
            polls += 1

    async with (
        await aioipc.serve(f"unix:{path}", poller, idle_timeout=0.3) as server,
        idle_clients(server, path, 1),
    ):
        await until(lambda: server.connections == 0)  # closed for idling, polls and all
    assert polls >= 3
    assert caplog.text.count("idle_timeout") == 1


# -- a connect flood leaves the rest of the program its turns ---------------------------------

CONNECT_FLOOD = """
    import socket, sys

    print("flooding", flush=True)
    path = sys.argv[2]
    try:
        while True:  # connect and leave at once, as fast as one process can, until the server goes
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.close()
    except OSError:
        pass
"""


async def test_a_connect_flood_leaves_a_ticker_its_turns(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    """2,000 connections of a flood, counted rather than timed (a busy machine makes a slower flood,
    not a different answer); the ticker's longest wait is in this thread's CPU time: the loop's work."""
    from helpers import service

    from aioipc.testing import measure_fairness

    flooded = anyio.Event()
    count = [0]

    async def leaves_at_once(msgs: Any) -> None:
        count[0] += 1
        if count[0] >= 2000:
            flooded.set()
        async for _ in msgs:
            pass

    async with (
        await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", leaves_at_once) as server,
        service(tmp_path, CONNECT_FLOOD, server.address.partition(":")[2]) as flood,
    ):
        with anyio.fail_after(30):
            await flood.expect("flooding")
            gc.disable()  # a full collection of this test process's heap is no work of the loop's
            try:
                seen = await measure_fairness(flooded.wait, count=1)  # one wait: all 2,000 connections
            finally:
                gc.enable()
            await server.close()  # the flood's next connect fails: it ends
            await flood.proc.wait()
    assert seen.longest < 0.05, f"a ticker waited {seen.longest * 1000:.0f} ms of work during a connect flood"
    assert seen.turns >= 2000 // 64, f"a ticker got {seen.turns} turns during 2,000 connections"
