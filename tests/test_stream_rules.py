"""The stream rules of every fd, framed and ring stream, between real processes.

Every good message before a bad frame; buffers that grow with the bytes
that arrive; typed buffers counted in bytes; exactly-once sends; fairness
under a flood (a ticker keeps its turns, a timeout fires, SIGTERM stops a
flooded server).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import socket
import struct
import sys
import termios
import textwrap
import time
import tracemalloc
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from helpers import assert_fair, service, shell_kill, until

import aioipc
import aioipc.fifo
import aioipc.pipes
import aioipc.process
import aioipc.sockets
from aioipc import FrameTooLarge
from aioipc.shm import Ring
from aioipc.testing import measure_fairness, wait_until_idle


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def read_line(stream: anyio.abc.ByteReceiveStream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += await stream.receive()
    return line


async def python_child(source: str, *args: str, **options: object) -> aioipc.process.Process:
    return await aioipc.process.spawn(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        **options,  # type: ignore[arg-type]
    )


# -- every good message before the bad one ----------------------------------------------------


async def test_whole_messages_before_an_oversize_frame_in_the_same_write() -> None:
    wire = frame(b"one") + frame(b"two") + frame(b"x" * 5000)
    proc = await python_child(
        f"import sys; sys.stdout.buffer.write({wire!r}); sys.stdout.flush()",
        stdout=aioipc.process.PIPE,
        channel=False,
    )
    async with proc:
        assert proc.stdout is not None
        rx = aioipc.framed(proc.stdout, max_size=1024)
        with anyio.fail_after(10):
            assert await proc.wait() == 0  # all of it is in the pipe, written at once
            assert await rx.receive() == b"one"
            assert await rx.receive() == b"two"
            with pytest.raises(FrameTooLarge):
                await rx.receive()


# -- a header is no memory amplifier -----------------------------------------------------------

HEADER_ONLY_CLIENTS = """
    import socket, struct, sys
    clients = []
    for _ in range(int(sys.argv[2])):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        s.sendall(struct.pack(">I", 16 * 2**20) + b"x")  # announces 16 MiB, sends 1 byte
        clients.append(s)
    print("sent", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


async def test_headers_announcing_16_mib_cost_what_arrived(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "amp.sock"
    fds: list[int] = []

    async def handler(stream: aioipc.MessageStream) -> None:
        fds.append(stream.extra(aioipc.IPCAttribute.fd))
        with contextlib.suppress(aioipc.ProtocolError, anyio.EndOfStream, anyio.BrokenResourceError):
            await stream.receive()

    def all_read() -> bool:
        unread = array("i", [0])
        for fd in fds:
            fcntl.ioctl(fd, termios.FIONREAD, unread)
            if unread[0]:
                return False
        return len(fds) == 32

    async with await aioipc.serve(f"unix:{path}", handler) as server:
        before = rss_bytes()
        proc = await python_child(
            HEADER_ONLY_CLIENTS, str(path), "32", stdin=aioipc.process.PIPE, stdout=aioipc.process.PIPE
        )
        async with proc:
            assert proc.stdout is not None
            assert proc.stdin is not None
            with anyio.fail_after(20):
                assert await read_line(proc.stdout) == b"sent\n"
                await until(all_read)
                grown = rss_bytes() - before
                await proc.stdin.aclose()
                await proc.wait()
        await server.close()
    assert grown < 64 * 2**20, f"32 headers of 16 MiB raised RSS by {grown / 2**20:.0f} MiB"


IDLE_WRITER = """
    import os, struct, sys
    for fd in map(int, sys.argv[1].split(",")):
        os.write(fd, struct.pack(">I", 5) + b"hello")
    print("sent", flush=True)
    sys.stdin.read()  # keeps every pipe open, and idle, until the parent closes our stdin
"""


def idle_pair(kind: str) -> tuple[int, aioipc.MessageStream | aioipc.MessageReceiveStream]:
    """(the child's fd, our framed end) of a pipe or a unix stream socketpair."""
    if kind == "pipe":
        r, w = os.pipe()
        end = aioipc.pipes.from_fd(r, "r")
        assert isinstance(end, aioipc.pipes.PipeReceiveStream)
        return w, aioipc.framed(end)
    ours, theirs = socket.socketpair()
    return theirs.detach(), aioipc.framed(aioipc.sockets.from_socket(ours))


@pytest.mark.parametrize("kind", ["pipe", "unix"])
async def test_idle_framed_streams_hold_no_read_buffer(kind: str) -> None:
    count = 200
    pairs = [idle_pair(kind) for _ in range(count)]
    writers = [w for w, _ in pairs]
    streams = [stream for _, stream in pairs]
    proc = await python_child(
        IDLE_WRITER,
        ",".join(map(str, writers)),
        pass_fds=writers,
        stdin=aioipc.process.PIPE,
        stdout=aioipc.process.PIPE,
        channel=False,
    )
    for fd in writers:
        os.close(fd)
    async with proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        tracemalloc.start()
        try:
            with anyio.fail_after(20):
                assert await read_line(proc.stdout) == b"sent\n"
                before = tracemalloc.get_traced_memory()[0]
                for rx in streams:
                    assert await rx.receive() == b"hello"
                async with anyio.create_task_group() as tg:
                    for rx in streams:
                        tg.start_soon(rx.receive)  # parks: the stream is idle
                    await wait_until_idle()
                    held = tracemalloc.get_traced_memory()[0] - before
                    tg.cancel_scope.cancel()
        finally:
            tracemalloc.stop()
            for rx in streams:
                await rx.aclose()
            await proc.stdin.aclose()
            await proc.wait()
    assert held < count * 16 * 1024, f"{count} idle framed streams hold {held / count / 1024:.0f} KiB each"


# -- typed buffers are counted in bytes -------------------------------------------------------


async def test_a_raw_send_of_an_array_delivers_every_byte_over_a_pipe() -> None:
    proc = await aioipc.process.spawn(
        ["wc", "-c"], stdin=aioipc.process.PIPE, stdout=aioipc.process.PIPE, channel=False
    )
    async with proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        with anyio.fail_after(10):
            await proc.stdin.send(array("Q", range(10_000)))  # type: ignore[arg-type]
            await proc.stdin.aclose()
            out = b""
            async for chunk in proc.stdout:
                out += chunk
        assert int(out) == 80_000


async def test_a_raw_send_of_an_array_over_a_fifo_completes(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "typed.fifo"
    async with await aioipc.fifo.create(path):
        proc = await aioipc.process.spawn(
            ["sh", "-c", f"wc -c < {path}"], stdout=aioipc.process.PIPE, channel=False
        )
        async with proc:
            assert proc.stdout is not None
            with anyio.fail_after(10):
                writer = await aioipc.fifo.open_writer(path)
                await writer.send(array("Q", range(10_000)))  # type: ignore[arg-type]
                await writer.aclose()
                out = b""
                async for chunk in proc.stdout:
                    out += chunk
            assert int(out) == 80_000


async def test_seqpacket_max_size_counts_bytes_not_items() -> None:
    a, b = aioipc.sockets.socketpair("seqpacket", max_size=1000)
    async with a, b:
        with pytest.raises(FrameTooLarge):
            await a.send(array("Q", range(1000)))  # 8,000 bytes
        await a.send(array("Q", range(100)))
        assert await b.receive() == array("Q", range(100)).tobytes()


# -- exactly once -------------------------------------------------------------------------------

COUNTING_READER = """
    import struct, anyio, aioipc, sys

    async def main():
        got = []
        async with await aioipc.parent_channel() as channel:
            async for message in channel:
                number, size = struct.unpack_from(">II", message)
                assert len(message) == 8 + size and message[8:] == b"x" * size, "torn message"
                got.append(number)
                if len(got) % 20 == 0:
                    await anyio.sleep(0.001)  # a slow reader: the sender meets backpressure
        print(" ".join(map(str, got)), flush=True)

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_cancelled_sends_are_never_delivered_and_returned_sends_always_are() -> None:
    from helpers import loop_name

    proc = await python_child(COUNTING_READER, loop_name(), stdout=aioipc.process.PIPE)
    returned: list[int] = []
    raised = 0
    rng = random.Random(11)
    async with proc:
        assert proc.stdout is not None
        channel = proc.channel
        assert channel is not None
        with anyio.fail_after(60):
            for number in range(600):
                size = rng.choice((60, 5000, 40_000, 200_000))
                with anyio.move_on_after(rng.random() * 0.0005):
                    await channel.send(struct.pack(">II", number, size) + b"x" * size)
                    returned.append(number)
                if not returned or returned[-1] != number:
                    raised += 1
            await channel.aclose()
            out = b""
            async for chunk in proc.stdout:
                out += chunk
            assert await proc.wait() == 0
    got = [int(n) for n in out.split()]
    assert raised > 0, "no send was cancelled: the test did not test anything"
    assert got == returned, "the receiver must get exactly the sends that returned, in order"


# -- fairness under a flood ----------------------------------------------------------------------


async def flood_check(
    proc: aioipc.process.Process, stream: Any, what: str, then: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Measure fairness while ``proc`` floods ``stream`` (then run ``then()``), and close
    ``stream``: the flood ends, and so does ``proc``."""
    async with proc:
        with anyio.fail_after(10):
            assert await stream.receive() == b"flood"
            seen = await measure_fairness(stream.receive)
            if then is not None:
                await then()
            await stream.aclose()
            await proc.wait()
    assert_fair(seen, what)


FLOODING_PIPE = """
    import struct, sys
    chunk = (struct.pack(">I", 5) + b"flood") * 10_000
    try:
        while True:
            sys.stdout.buffer.write(chunk)
    except BrokenPipeError:
        pass
"""


async def test_a_flooded_framed_pipe_leaves_a_ticker_its_turns() -> None:
    proc = await python_child(FLOODING_PIPE, stdout=aioipc.process.PIPE, channel=False)
    assert proc.stdout is not None
    await flood_check(proc, aioipc.framed(proc.stdout), "a pipe flood")


FLOODING_CHANNEL = """
    import anyio, aioipc, sys

    async def main():
        async with await aioipc.parent_channel() as channel:
            try:
                while True:
                    await channel.send(b"flood")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_a_flooded_unix_socket_leaves_a_ticker_its_turns() -> None:
    from helpers import loop_name

    proc = await python_child(FLOODING_CHANNEL, loop_name())
    assert proc.channel is not None
    await flood_check(proc, proc.channel, "a unix socket flood")


FLOODING_RING = """
    import anyio, aioipc, sys
    from aioipc.shm import Ring

    async def main():
        async with await Ring.attach(sys.argv[2]) as ring:
            try:
                while True:
                    await ring.send_many([b"flood"] * 64)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_a_flooded_ring_leaves_a_ticker_its_turns_and_a_timeout_fires_on_time(
    unique_name: str,
) -> None:
    from helpers import loop_name

    late: list[float] = []

    async def a_1_ms_timeout() -> None:
        start = time.thread_time()
        with anyio.move_on_after(0.001):
            while True:
                await ring.receive()
        late.append(time.thread_time() - start - 0.001)  # the work done past the deadline

    name = "/" + unique_name
    async with await Ring.create(name, 2**20) as ring:
        proc = await python_child(FLOODING_RING, loop_name(), name, channel=False)
        await flood_check(proc, ring, "a ring flood", a_1_ms_timeout)
    assert late[0] < 0.05, f"a 1 ms timeout around a flooded ring fired {late[0] * 1000:.0f} ms late"


FLOODED_SERVER = """
    import sys, anyio, aioipc
    from aioipc.shutdown import graceful_shutdown

    async def main():
        async with graceful_shutdown(timeout=2) as sd:
            count = 0

            async def handler(stream):
                nonlocal count
                async for _ in stream:
                    count += 1
                    if count == 20_000:
                        print("flooded", flush=True)

            server = await aioipc.serve("unix:" + sys.argv[2], handler)
            sd.add_hook(server.close)
            print("ready", flush=True)
            await server.serve_forever()
        print("stopped", flush=True)

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_sigterm_stops_a_flooded_server_within_3_s(tmp_path: Path, tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "flooded.sock"
    async with service(tmp_path, FLOODED_SERVER, str(path)) as svc:
        with anyio.fail_after(20):
            await svc.expect("ready")
            # /dev/zero is an endless run of empty length-prefixed messages.
            flood = await aioipc.process.spawn(
                ["socat", "-u", "/dev/zero", f"UNIX-CONNECT:{path}"], channel=False
            )
            async with flood:
                await svc.expect("flooded")
                loop = asyncio.get_running_loop()
                start = loop.time()
                await shell_kill("TERM", svc.pid)
                await svc.expect("stopped")
                await svc.proc.wait()
                took = loop.time() - start
                await flood.terminate(grace=1)
    assert took < 3, f"a flooded server took {took:.1f} s to stop on SIGTERM"
