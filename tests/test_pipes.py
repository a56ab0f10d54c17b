"""Anonymous pipes: conformance, a real child process, bad fds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioipc
import aioipc.pipes
from aioipc._core.fdio import FdHandle
from aioipc.testing import check_byte_stream, check_message_stream


@asynccontextmanager
async def pipe_pair() -> AsyncIterator[tuple[aioipc.pipes.PipeSendStream, aioipc.pipes.PipeReceiveStream]]:
    r, w = aioipc.pipe()
    async with w, r:
        yield w, r


@asynccontextmanager
async def framed_pipe_pair() -> AsyncIterator[tuple[aioipc.MessageSendStream, aioipc.MessageReceiveStream]]:
    r, w = aioipc.pipe()
    async with aioipc.framed(w) as tx, aioipc.framed(r) as rx:
        yield tx, rx


@asynccontextmanager
async def duplex() -> AsyncIterator[tuple[aioipc.pipes.PipeStream, aioipc.pipes.PipeStream]]:
    a, b = aioipc.pipes.duplex_pair()
    async with a, b:
        yield a, b


async def test_pipe_byte_stream_conformance() -> None:
    await check_byte_stream(pipe_pair)


async def test_framed_pipe_message_conformance() -> None:
    await check_message_stream(framed_pipe_pair)


async def test_duplex_pair_conformance() -> None:
    await check_byte_stream(duplex, two_way=True)


CHILD = textwrap.dedent(
    """
    import sys, aioipc, aioipc.pipes

    async def main():
        rx = aioipc.framed(aioipc.pipes.from_fd(int(sys.argv[1]), "r"))
        tx = aioipc.framed(aioipc.pipes.from_fd(int(sys.argv[2]), "w"))
        async with rx, tx:
            async for message in rx:
                await tx.send(message.upper())

    aioipc.run(main(), loop=sys.argv[3])
    """
)


@asynccontextmanager
async def upper_echo_child(
    tmp_path: Path,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, aioipc.MessageSendStream, aioipc.MessageReceiveStream]]:
    """A child that sends every message back upper-cased, over two pipes: (child, to it, from it)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    to_child_r, to_child_w = aioipc.pipe()
    from_child_r, from_child_w = aioipc.pipe()
    loop_name = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    fds = [to_child_r.fileno(), from_child_w.fileno()]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *map(str, fds), loop_name, pass_fds=fds
    )
    await to_child_r.aclose()
    await from_child_w.aclose()
    try:
        async with aioipc.framed(to_child_w) as tx, aioipc.framed(from_child_r) as rx:
            yield proc, tx, rx
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_child_process_echoes_over_passed_pipe_ends(tmp_path: Path) -> None:
    async with upper_echo_child(tmp_path) as (proc, tx, rx):
        with anyio.fail_after(20):
            for i in range(100):
                await tx.send(b"msg %d" % i)
            await tx.send(b"x" * 500_000)
            for i in range(100):
                assert await rx.receive() == b"MSG %d" % i
            assert await rx.receive() == b"X" * 500_000
            await tx.aclose()
            with pytest.raises(anyio.EndOfStream):
                await rx.receive()
            assert await proc.wait() == 0


async def test_a_large_send_of_bytes_is_held_not_copied_and_each_send_arrives_as_sent(tmp_path: Path) -> None:
    async with upper_echo_child(tmp_path) as (proc, tx, rx):
        sender = tx.transport_stream  # type: ignore[attr-defined]
        mutable = bytearray(b"m" * 300_000)

        async def send_all() -> None:
            await tx.send(b"b" * 2**20)  # the pipe takes 64 KiB at most: the rest waits, held
            assert sender._held is not None
            assert not sender._pending
            await tx.send(b"small")  # queued behind it
            await tx.send(mutable)  # a bytearray's rest is copied: changing it now changes nothing sent
            assert sender._pending
            assert sender._held is None
            mutable[:] = b"z" * len(mutable)
            await tx.send(b"last")
            await tx.aclose()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all)  # the child echoes as it reads: we read meanwhile
                assert await rx.receive() == b"B" * 2**20
                assert await rx.receive() == b"SMALL"
                assert await rx.receive() == b"M" * 300_000
                assert await rx.receive() == b"LAST"
            assert await proc.wait() == 0


async def test_a_large_frame_wakes_its_parked_receiver_once_not_once_a_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parks = 0
    park_read = FdHandle.park_read

    def counted(self: FdHandle, *args: Any) -> asyncio.Future[Any]:
        nonlocal parks
        parks += 1
        return park_read(self, *args)

    monkeypatch.setattr(FdHandle, "park_read", counted)
    async with upper_echo_child(tmp_path) as (proc, tx, rx):
        with anyio.fail_after(20):
            for _ in range(3):  # the pipe holds 64 KiB: each echo comes in 16 chunks or more
                await tx.send(b"l" * 2**20)
                assert await rx.receive() == b"L" * 2**20
            assert parks <= 3
            await tx.aclose()
            assert await proc.wait() == 0


async def test_writer_gets_broken_resource_when_reader_dies() -> None:
    """A reader that exits (head reading 5 bytes) makes our sends fail cleanly, no SIGPIPE."""
    r, w = aioipc.pipe()
    fd = r.detach()  # a blocking fd, as `head` expects
    try:
        proc = await asyncio.create_subprocess_exec("head", "-c", "5", stdin=fd, stdout=subprocess.DEVNULL)
    finally:
        os.close(fd)
    async with w:
        with anyio.fail_after(10), pytest.raises(anyio.BrokenResourceError) as info:
            while True:
                await w.send(b"0123456789" * 1000)
        assert isinstance(info.value.__cause__, BrokenPipeError)
    assert await proc.wait() == 0


def test_from_fd_refuses_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="regular files cannot be polled"):
            aioipc.pipes.from_fd(fd, "r")
    finally:
        os.close(fd)


def test_from_fd_refuses_a_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode must be"):
        aioipc.pipes.from_fd(0, "rw")  # type: ignore[call-overload]


async def test_unclosed_pipe_warns() -> None:
    r, w = aioipc.pipe()
    await w.aclose()
    with pytest.warns(ResourceWarning, match="unclosed"):
        del r
        import gc

        gc.collect()


async def test_a_receive_cancelled_after_its_data_was_read_loses_nothing() -> None:
    """The loop callback may read before the task resumes; a cancel then must hand the data on."""
    r, w = aioipc.pipe()
    async with w, r:
        for _ in range(20):
            task = asyncio.ensure_future(r.receive())
            await aioipc.testing.wait_until_idle()
            os.write(w.fileno(), b"hello")
            await asyncio.sleep(0)  # let the loop run the reader callback, not the task
            task.cancel()
            try:
                got = await task
            except asyncio.CancelledError:
                with anyio.fail_after(5):
                    got = await r.receive()
            assert got == b"hello"
