"""Line framing: what shell tools, socat and nc speak, between real processes."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aioipc
from aioipc import FrameTooLarge
from aioipc._core.framing import EOF, NEED_DATA, LineFramer

socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")


def drain(framer: LineFramer) -> list[bytes]:
    out = []
    while isinstance(message := framer.next_message(), bytes):
        out.append(message)
    return out


@given(
    st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10),
)
def test_line_framer_gives_back_every_line_however_the_bytes_are_cut(
    messages: list[bytes], cuts: list[int]
) -> None:
    wire = b"".join(LineFramer.encode(m) for m in messages)
    framer = LineFramer(max_size=64)
    got: list[bytes] = []
    position = 0
    for size in cuts * (len(wire) // max(sum(cuts), 1) + 1):
        if position >= len(wire):
            break
        framer.feed(wire[position : position + size])
        position += size
        got += drain(framer)
    framer.feed(wire[position:])
    framer.feed(b"")
    got += drain(framer)
    assert got == messages
    assert framer.next_message() is EOF


def test_every_line_before_a_too_long_one_comes_first() -> None:
    framer = LineFramer(max_size=4)
    framer.feed(b"ab\n\ncd\n" + b"x" * 10)
    assert [framer.next_message() for _ in range(3)] == [b"ab", b"", b"cd"]
    with pytest.raises(FrameTooLarge):
        framer.next_message()


def test_a_last_line_without_newline_is_a_message_and_partial_data_is_not() -> None:
    framer = LineFramer()
    framer.feed(b"one\ntw")
    assert drain(framer) == [b"one"]
    assert framer.next_message() is NEED_DATA
    framer.feed(b"o")
    framer.feed(b"")
    assert drain(framer) == [b"two"]


def test_the_buffer_is_dropped_once_every_line_was_parsed() -> None:
    framer = LineFramer()
    framer.feed(b"x" * 1000 + b"\n")
    assert drain(framer) == [b"x" * 1000]
    assert framer.buffered == 0
    assert len(framer._buf) == 0


def test_a_message_with_a_newline_cannot_be_sent_as_a_line() -> None:
    with pytest.raises(ValueError, match="newline"):
        LineFramer.encode(b"a\nb")


async def test_lines_over_a_pipe_both_ways() -> None:
    r, w = aioipc.pipe()
    async with aioipc.framed(w, framing="lines") as tx, aioipc.framed(r, framing="lines") as rx:
        await tx.send(b"hello")
        await tx.send(b"")
        with pytest.raises(ValueError, match="newline"):
            await tx.send(b"two\nlines")
        assert await rx.receive() == b"hello"
        assert await rx.receive() == b""


async def run(*argv: str, stdin: bytes | None = None) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    with anyio.fail_after(20):
        out, _ = await proc.communicate(stdin)
    assert proc.returncode == 0, argv
    return out


@socat
async def test_socat_speaks_lines_to_a_unix_server(tmp_ipc_dir: Path) -> None:
    async def shout(msgs: Any) -> None:
        async for line in msgs:
            await msgs.send(line.upper())

    path = tmp_ipc_dir / "lines.sock"
    async with await aioipc.serve(f"unix:{path}", shout, framing="lines"):
        out = await run("socat", "-t", "5", "-", f"UNIX-CONNECT:{path}", stdin=b"hi\nthere\n")
    assert out == b"HI\nTHERE\n"


async def test_shell_echo_into_a_fifo_server_with_lines(tmp_ipc_dir: Path) -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    async def collect(msgs: Any) -> None:
        async for line in msgs:
            got.append(line)
            if len(got) == 3:
                done.set()

    path = tmp_ipc_dir / "jobs.fifo"
    async with await aioipc.serve(f"fifo:{path}", collect, framing="lines"):
        await run("sh", "-c", f"echo one > {path}; echo two > {path}; printf 'three\\n' > {path}")
        with anyio.fail_after(10):
            await done.wait()
    assert got == [b"one", b"two", b"three"]


@socat
async def test_a_too_long_line_ends_only_that_connection(tmp_ipc_dir: Path) -> None:
    errors: list[BaseException] = []

    async def echo(msgs: Any) -> None:
        try:
            async for line in msgs:
                await msgs.send(line)
        except FrameTooLarge as exc:
            errors.append(exc)

    path = tmp_ipc_dir / "limit.sock"
    async with await aioipc.serve(f"unix:{path}", echo, framing="lines", max_size=16):
        out = await run("socat", "-t", "5", "-", f"UNIX-CONNECT:{path}", stdin=b"ok\n" + b"y" * 100 + b"\n")
        assert out == b"ok\n"
        async with await aioipc.connect(f"unix:{path}", framing="lines", max_size=16) as msgs:
            await msgs.send(b"still serving")
            with anyio.fail_after(10):
                assert await msgs.receive() == b"still serving"
    assert len(errors) == 1
