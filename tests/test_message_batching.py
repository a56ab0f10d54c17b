"""Batched message sockets (sendmmsg/recvmmsg) between real processes, with and without the accelerator.

Every test runs on both loops; ``make test`` runs this file again with
``AIOIPC_NO_SPEEDUPS=1``, so each one checks the compiled path and the pure-Python one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from helpers import assert_fair, check_echoed_ops_are_coroutines, loop_name

import aioipc
import aioipc.process
import aioipc.sockets
from aioipc.testing import measure_fairness

KINDS = [socket.SOCK_SEQPACKET, socket.SOCK_DGRAM]
KIND_IDS = ["seqpacket", "dgram"]

# The child: ``MODE FD LOOP ARGS``; it speaks over the socket at FD and prints what it saw as JSON.
CHILD = """
    import json, os, socket, struct, sys, anyio, aioipc, aioipc.sockets

    mode, fd, loop, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

    def message(number, size):
        return struct.pack(">I", number) + bytes([number % 251]) * (size - 4)

    async def main():
        sock = socket.socket(fileno=fd)
        async with aioipc.sockets.from_socket(sock, max_size=int(args[0])) as stream:
            if mode == "send":  # numbered messages of the sizes given, then an end marker
                sizes = json.loads(args[1])
                for number, size in enumerate(sizes):
                    await stream.send(message(number, size))
                    if args[2:] and number % 50 == 0:
                        await anyio.sleep(0.005)  # paced: the receiver catches up and waits, even a slow one
                await stream.send(b"end")
            elif mode == "count":  # receive numbered messages until the end marker
                got = []
                while (data := await stream.receive()) != b"end":
                    number = struct.unpack_from(">I", data)[0]
                    assert data == message(number, len(data)), "torn message"
                    got.append(number)
                    if len(got) % 50 == 0:
                        await anyio.sleep(0.001)  # a slow reader: the sender meets backpressure
                print(json.dumps(got), flush=True)
            elif mode == "flood":  # until the peer goes
                print("flooding", flush=True)
                number = 0
                try:
                    while True:
                        await stream.send(message(number, 64))
                        number += 1
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionRefusedError):
                    pass
            elif mode == "echo":  # each message back upper-cased, until the end marker
                while (data := await stream.receive()) != b"end":
                    await stream.send(data.upper())
            elif mode == "mixed":  # fds inside a burst
                r, w = os.pipe()
                os.write(w, b"through the fd")
                await stream.send(b"before")
                await stream.send_fds(b"with fd", [r])
                await stream.send(b"after")
                print("sent", flush=True)
                await stream.receive()  # hold the socket open until told

    aioipc.run(main(), loop=loop)
"""


def message(number: int, size: int) -> bytes:
    return struct.pack(">I", number) + bytes([number % 251]) * (size - 4)


@asynccontextmanager
async def child(
    kind: int, mode: str, *args: str, max_size: int = 65536, sndbuf: int = 0
) -> AsyncIterator[tuple[Any, aioipc.process.Process]]:
    """A child process speaking ``mode`` over one end of a Unix socketpair; ours is a stream on the other."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    try:
        proc = await aioipc.process.spawn(
            [sys.executable, "-c", textwrap.dedent(CHILD), mode, str(theirs.fileno()), loop_name(), *args],
            pass_fds=[theirs.fileno()],
            stdout=aioipc.process.PIPE,
            channel=False,
        )
    finally:
        theirs.close()
    async with proc, aioipc.sockets.from_socket(ours, max_size=max_size) as stream:
        yield stream, proc


async def read_all(proc: aioipc.process.Process) -> bytes:
    assert proc.stdout is not None
    data = b""
    async for chunk in proc.stdout:
        data += chunk
    return data


async def read_line(proc: aioipc.process.Process) -> bytes:
    assert proc.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        data += await proc.stdout.receive(1)
    return data


# -- order, boundaries, exactly once -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
async def test_a_burst_from_another_process_arrives_whole_in_order(kind: int) -> None:
    rng = random.Random(5)
    # small (batched), larger than a batched send (16 KiB: unbatched), and the smallest numbered
    sizes = [rng.choice((4, 4, 64, 64, 900, 20_000)) for _ in range(3000)]
    async with child(kind, "send", "65536", json.dumps(sizes)) as (rx, proc):
        with anyio.fail_after(30):
            for number, size in enumerate(sizes):
                assert await rx.receive() == message(number, size)
            assert await rx.receive() == b"end"
            assert await proc.wait() == 0


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
async def test_oversize_messages_inside_a_batch_are_dropped_alone(kind: int) -> None:
    sizes = [64, 64, 3000, 64, 3000, 3000, 64] * 40
    async with child(kind, "send", "65536", json.dumps(sizes), max_size=1000) as (rx, proc):
        with anyio.fail_after(30):
            for number, size in enumerate(sizes):
                if size > 1000:
                    with pytest.raises(aioipc.FrameTooLarge):
                        await rx.receive()
                else:
                    assert await rx.receive() == message(number, size)
            assert await rx.receive() == b"end"
            assert await proc.wait() == 0


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
async def test_cancelled_sends_are_never_delivered_and_returned_sends_always_are(kind: int) -> None:
    rng = random.Random(7)
    returned: list[int] = []
    raised = 0
    async with child(kind, "count", "65536", sndbuf=16384) as (tx, proc):
        with anyio.fail_after(60):
            for number in range(3000):
                with anyio.move_on_after(rng.choice((0, 0.0001, 0.001, 1))):
                    await tx.send(message(number, rng.choice((8, 64, 500, 6000))))
                    returned.append(number)
                if not returned or returned[-1] != number:
                    raised += 1
            await tx.send(b"end")
        with anyio.fail_after(30):
            got = json.loads(await read_all(proc))
            assert await proc.wait() == 0
    assert raised > 0, "no send was cancelled: the test did not test anything"
    assert got == returned, "the receiver must get exactly the sends that returned, in order"


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
async def test_cancelled_receives_lose_and_repeat_nothing(kind: int) -> None:
    rng = random.Random(9)
    sizes = [rng.choice((4, 64, 700)) for _ in range(3000)]
    got: list[int] = []
    cancelled = 0
    async with child(kind, "send", "65536", json.dumps(sizes), "paced") as (rx, proc):
        with anyio.fail_after(60):
            while True:
                with anyio.CancelScope() as scope:
                    if rng.random() < 0.2:
                        scope.cancel()  # cancelled before it starts: at its first await, if any
                    elif rng.random() < 0.2:
                        scope.deadline = anyio.current_time() + rng.random() * 0.0005
                    data = await rx.receive()
                if scope.cancelled_caught:
                    cancelled += 1
                    continue
                if data == b"end":
                    break
                number = struct.unpack_from(">I", data)[0]
                assert data == message(number, sizes[number])
                got.append(number)
            assert await proc.wait() == 0
    assert cancelled > 0
    assert got == list(range(len(sizes))), "a cancelled receive lost or repeated a message"


async def test_send_eof_sends_the_burst_before_it_first() -> None:
    async with child(socket.SOCK_SEQPACKET, "count", "65536") as (tx, proc):
        with anyio.fail_after(30):
            for number in range(500):  # most of it pending when send_eof() comes
                await tx.send(message(number, 64))
            await tx.send(b"end")
            await tx.send_eof()
            assert json.loads(await read_all(proc)) == list(range(500))
            assert await proc.wait() == 0


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
async def test_send_and_receive_are_coroutines_to_awaits_and_tasks(kind: int) -> None:
    """Compiled, they are coroutines without a frame (FastOp)."""
    async with child(kind, "echo", "65536") as (stream, proc):
        with anyio.fail_after(20):
            await check_echoed_ops_are_coroutines(stream)
            await stream.send(b"end")
            assert await proc.wait() == 0


def test_a_dropped_send_under_warnings_as_errors_is_reported_not_a_crash() -> None:
    """The never-awaited warning raised as an error goes to the unraisable hook, once per send()."""
    code = """if True:
        import socket, aioipc.sockets
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stream = aioipc.sockets.from_socket(ours)
        for _ in range(3):
            dropped = stream.send(b"x")
            del dropped
        ours.close()
        theirs.close()
        print("survived")
    """
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "survived\n"
    assert proc.stderr.count("was never awaited") == 3


# -- peers that die ---------------------------------------------------------------------------------


async def test_a_sender_killed_mid_batch_leaves_a_whole_prefix() -> None:
    async with child(socket.SOCK_SEQPACKET, "flood", "65536") as (rx, proc):
        with anyio.fail_after(30):
            assert await read_line(proc) == b"flooding\n"
            for number in range(300):  # batches have gone out; more are pending in the child
                assert await rx.receive() == message(number, 64)
            proc.send_signal(signal.SIGKILL)  # while it has a batch pending and the socket full
            assert await proc.wait() == -signal.SIGKILL
            number = 300
            while True:
                try:
                    data = await rx.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                assert data == message(number, 64), "a gap or a repeat after the sender died"
                number += 1
    assert number > 300, "what the sender had sent before it died was lost"


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
async def test_a_receiver_killed_with_sends_pending_breaks_the_sender(kind: int) -> None:
    async with child(kind, "count", "65536") as (tx, proc):
        with anyio.fail_after(30):
            for number in range(500):  # a burst: most of it pending at the end of this iteration
                await tx.send(message(number, 64))
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            with pytest.raises((anyio.BrokenResourceError, ConnectionRefusedError)):
                while True:
                    await tx.send(message(0, 64))
                    await anyio.lowlevel.checkpoint()


# -- fds and fairness --------------------------------------------------------------------------------


async def test_fds_sent_in_a_burst_reach_receive_fds_after_a_batched_receive() -> None:
    async with child(socket.SOCK_SEQPACKET, "mixed", "65536") as (rx, proc):
        with anyio.fail_after(30):
            assert await read_line(proc) == b"sent\n"
            assert await rx.receive() == b"before"  # takes the batch that holds the fd too
            data, fds = await rx.receive_fds()
            assert data == b"with fd"
            assert len(fds) == 1
            try:
                assert os.read(fds[0], 100) == b"through the fd"
            finally:
                os.close(fds[0])
            assert await rx.receive() == b"after"
            await rx.send(b"done")
            assert await proc.wait() == 0


async def test_an_fd_sent_to_a_plain_receive_is_closed_not_leaked() -> None:
    before = len(os.listdir("/proc/self/fd"))
    async with child(socket.SOCK_SEQPACKET, "mixed", "65536") as (rx, proc):
        with anyio.fail_after(30):
            assert await read_line(proc) == b"sent\n"
            assert [await rx.receive() for _ in range(3)] == [b"before", b"with fd", b"after"]
            await rx.send(b"done")
            assert await proc.wait() == 0
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
async def test_a_flood_from_another_process_leaves_a_ticker_its_turns(kind: int) -> None:
    async with child(kind, "flood", "65536") as (rx, proc):
        with anyio.fail_after(10):
            assert await read_line(proc) == b"flooding\n"
            seen = await measure_fairness(rx.receive)
            await rx.aclose()  # the child floods until we go
            await proc.wait()
    assert_fair(seen, "a message socket flood")


# -- datagram senders ---------------------------------------------------------------------------------


async def test_datagram_senders_are_told_apart_inside_a_batch(tmp_ipc_dir: Any) -> None:
    path = str(tmp_ipc_dir / "server.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    rx = aioipc.sockets.from_socket(server, max_size=1024)  # bound, not connected: a datagram server
    named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    named.bind(str(tmp_ipc_dir / "named.sock"))
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(f"\0aioipc-test-{os.getpid()}")
    unnamed = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    senders = [named, abstract, unnamed]
    async with rx:
        with named, abstract, unnamed:
            # all waiting before the first receive (a queue holds 10 from others): one batch
            for number in range(9):
                senders[number % 3].sendto(message(number, 16), path)
            expected = [named.getsockname(), abstract.getsockname(), None]
            with anyio.fail_after(10):
                for number in range(9):
                    data, address = await rx.receive_from()
                    assert data == message(number, 16)
                    assert address == expected[number % 3]
                    assert rx.extra(aioipc.PeerCredentials).pid == os.getpid()


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
async def test_a_burst_joins_the_pending_batch_up_to_its_bound(
    kind: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst's first send takes the slow path, and a few more once SEND_MAX messages are
    # pending (flushes); the rest join the batch in the fast path (compiled: with the limits
    # messagecore hands it), and every message arrives once, in order.
    from aioipc._core.messagecore import SEND_MAX

    a, b = socket.socketpair(socket.AF_UNIX, kind)
    async with aioipc.sockets.from_socket(a) as tx, aioipc.sockets.from_socket(b) as rx:
        slow = []
        original = type(tx)._send_message

        async def counted(self: Any, item: Any) -> None:
            slow.append(len(item))
            await original(self, item)

        monkeypatch.setattr(type(tx), "_send_message", counted)
        with anyio.fail_after(10):
            for count in (100, SEND_MAX + 50):
                slow.clear()
                for number in range(count):  # one loop iteration: no send here waits
                    await tx.send(message(number, 8))
                if count < SEND_MAX:
                    assert len(slow) == 1
                else:  # the bound: a few slow sends (flushes), not one per message
                    assert 1 < len(slow) < 10
                for number in range(count):
                    assert await rx.receive() == message(number, 8)
