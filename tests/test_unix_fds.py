"""fds on the default framed unix stream: what a plain receive() takes is closed, too many is FdsTruncated."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from helpers import loop_name

import aioipc
import aioipc.sockets

_SENDER = """
import os, socket, sys
import aioipc, aioipc.sockets

async def main(fd, count, per_message):
    sock = socket.socket(fileno=fd)
    async with aioipc.framed(aioipc.sockets.from_socket(sock)) as msgs:
        read, write = os.pipe()
        for i in range(count):
            await msgs.send_fds(b"with fds %d" % i, [read] * per_message)
            await msgs.send(b"plain %d" % i)
        await msgs.send(b"end")
        assert await msgs.receive() == b"bye"

aioipc.run(main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])), loop=sys.argv[1])
"""


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@asynccontextmanager
async def _sender(
    theirs: socket.socket, count: int, per_message: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The child that sends ``count`` messages with ``per_message`` fds, each followed by a plain one."""
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", _SENDER, loop_name(), str(theirs.fileno()), str(count), str(per_message)],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    try:
        yield proc
    finally:
        if proc.returncode is None:  # the test failed before the child was done: no child left behind
            proc.kill()
            await proc.wait()


async def test_plain_receive_closes_the_fds_of_its_messages() -> None:
    before = _open_fds()
    ours, theirs = socket.socketpair()
    async with _sender(theirs, 100, 3) as proc:
        msgs = aioipc.framed(aioipc.sockets.from_socket(ours))
        with anyio.fail_after(30):
            most = received = 0
            while await msgs.receive() != b"end":
                received += 1
                most = max(most, _open_fds() - before)
            # Our socket, and at most the fds of the frame the last read ended in: none piles up.
            assert most <= 1 + 3
            assert received == 200
            await msgs.send(b"bye")
            await msgs.aclose()
            assert await proc.wait() == 0
    assert _open_fds() == before


_SEND_ONE = """
import os, socket, sys
import anyio, aioipc, aioipc.sockets

async def main(fd):
    async with aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=fd))) as msgs:
        read, write = os.pipe()
        await msgs.send_fds(b"with an fd", [read])
        try:
            await msgs.receive()
        except anyio.EndOfStream:  # the peer closed, as it should
            pass

aioipc.run(main(int(sys.argv[2])), loop=sys.argv[1])
"""


async def test_closing_closes_the_fds_of_a_message_a_plain_receive_took() -> None:
    before = _open_fds()
    ours, theirs = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SEND_ONE, loop_name(), str(theirs.fileno()), pass_fds=[theirs.fileno()]
    )
    theirs.close()
    try:
        msgs = aioipc.framed(aioipc.sockets.from_socket(ours))
        with anyio.fail_after(30):
            assert await msgs.receive() == b"with an fd"  # its fd is ours until the next read or the close
            await msgs.aclose()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert _open_fds() == before


async def test_receive_fds_gets_each_messages_own_fds_after_plain_receives() -> None:
    before = _open_fds()
    ours, theirs = socket.socketpair()
    async with _sender(theirs, 20, 1) as proc:
        msgs = aioipc.framed(aioipc.sockets.from_socket(ours))
        with anyio.fail_after(30):
            for i in range(20):
                if i % 2:
                    assert await msgs.receive() == b"with fds %d" % i  # closed by the stream
                    assert await msgs.receive_fds() == (b"plain %d" % i, [])
                else:
                    message, fds = await msgs.receive_fds()
                    assert message == b"with fds %d" % i
                    assert len(fds) == 1
                    os.fstat(fds[0])  # open, and ours
                    os.close(fds[0])
                    assert await msgs.receive() == b"plain %d" % i
            assert await msgs.receive() == b"end"
            await msgs.send(b"bye")
            await msgs.aclose()
            assert await proc.wait() == 0
    assert _open_fds() == before


async def test_too_many_fds_is_fds_truncated_and_the_stream_goes_on() -> None:
    before = _open_fds()
    ours, theirs = socket.socketpair()
    async with _sender(theirs, 2, 20) as proc:  # 20 fds > the 16 a framed unix stream takes
        msgs = aioipc.framed(aioipc.sockets.from_socket(ours))
        with anyio.fail_after(30):
            for i in range(2):
                with pytest.raises(aioipc.sockets.FdsTruncated) as info:
                    await msgs.receive_fds()
                assert info.value.data == b"with fds %d" % i
                assert await msgs.receive_fds() == (b"plain %d" % i, [])
            assert await msgs.receive() == b"end"
            await msgs.send(b"bye")
            await msgs.aclose()
            assert await proc.wait() == 0
    assert _open_fds() == before
