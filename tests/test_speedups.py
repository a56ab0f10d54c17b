"""The accelerator: which implementation runs, and the C frame parser against the Python one."""

from __future__ import annotations

import array
import importlib.util
import os
import socket
import struct
import subprocess
import sys
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aioipc
import aioipc.sockets
from aioipc import FrameTooLarge
from aioipc._core import framing, speedups

# -- which path runs -------------------------------------------------------------------------------


def _active_in_child(env: dict[str, str]) -> bool:
    code = "import aioipc._core.speedups as s; print(s.ACTIVE)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip() == "True"


def test_the_accelerator_runs_unless_turned_off() -> None:
    built = importlib.util.find_spec("aioipc._core._speedups") is not None
    env = {k: v for k, v in os.environ.items() if k != "AIOIPC_NO_SPEEDUPS"}
    assert _active_in_child(env) is built
    assert _active_in_child({**env, "AIOIPC_NO_SPEEDUPS": "1"}) is False
    turned_off = os.environ.get("AIOIPC_NO_SPEEDUPS", "") not in ("", "0")
    assert speedups.ACTIVE is (built and not turned_off)
    assert (speedups.recv_batch is speedups.recv_one) is not speedups.ACTIVE


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI builds the accelerator: it must be there")
def test_ci_built_the_accelerator() -> None:
    assert importlib.util.find_spec("aioipc._core._speedups") is not None


# -- the frame parser ---------------------------------------------------------------------------------


def framer_parse(
    framer: framing._PyFramerCore, buffer: bytes, start: int, end: int, batch: int
) -> tuple[list[bytes], int, int, int]:
    """One ``_parse`` of ``framer`` over ``buffer[start:end]``: messages, next start, need, bad size or -1."""
    framer._buf = bytearray(buffer)
    framer._view = memoryview(framer._buf)
    framer._start, framer._end, framer._need = start, end, 4
    framer.parsed = framing._NO_PARSED
    framer.total, framer._error = 0, None
    saved = framing.PARSE_BATCH
    setattr(framing, "PARSE_BATCH", batch)  # read by the Python _parse at each call  # noqa: B010
    framing.setup_compiled_framer()  # and handed to the compiled one
    try:
        framer._parse()
    finally:
        setattr(framing, "PARSE_BATCH", saved)  # noqa: B010
        framing.setup_compiled_framer()
    next_start = end if framer._start == framer._end == 0 else framer._start
    bad = -1 if framer._error is None else framer._error.size
    assert framer.total == len(framer.parsed)
    return list(framer.parsed), next_start, framer._need, bad


def python_framer(max_size: int) -> framing._PyFramerCore:
    framer = framing._PyFramerCore()
    framer.max_size = max_size
    return framer


frames = st.lists(st.binary(max_size=40), max_size=30)
compiled = pytest.mark.skipif(speedups.FramerCore is None, reason="the accelerator is not in use")


@compiled
@given(frames, st.integers(0, 4), st.integers(0, 50), st.integers(1, 40), st.binary(max_size=3))
def test_the_c_frame_parser_parses_as_the_framer_does(
    messages: list[bytes], cut: int, max_size: int, batch: int, junk: bytes
) -> None:
    wire = (
        b"".join(framing.Framer.encode(m) for m in messages) + struct.pack(">I", 100 + cut)[: cut or 4] + junk
    )
    buffer = b"??" + wire + b"!!"  # both keep to start..end
    ours = framer_parse(framing.Framer(max_size), buffer, 2, 2 + len(wire), batch)
    assert ours == framer_parse(python_framer(max_size), buffer, 2, 2 + len(wire), batch)


@compiled
def test_the_c_frame_parser_refuses_bounds_outside_the_buffer() -> None:
    framer = framing.Framer(10)
    framer._buf = bytearray(b"abc")
    for start, end in ((0, 4), (2, 1)):
        framer._start, framer._end = start, end
        with pytest.raises(ValueError, match="out of range"):
            framer._parse()


# -- a framed send over an fd stream (compiled: FastOp through SendCore) -----------------------------


def _pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "unix":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_a_framed_send_of_any_buffer_arrives_whole_and_refusals_send_nothing(kind: str) -> None:
    a, b = _pair(kind)
    tx = aioipc.framed(aioipc.sockets.from_socket(a), max_size=8)
    rx = aioipc.framed(aioipc.sockets.from_socket(b), max_size=8)
    payloads: list[Any] = [b"x", bytearray(b"yz"), memoryview(array.array("h", [1, 2])), b"", b"8 bytes!"]
    with anyio.fail_after(10):
        async with tx, rx:
            with pytest.raises(FrameTooLarge):
                await tx.send(b"9 bytes!!")
            for payload in payloads:
                await tx.send(payload)
            for _ in range(100):  # a burst: the first is written at once, the rest queue behind it
                await tx.send(b"burst")
            assert [await rx.receive() for _ in payloads] == [
                bytes(memoryview(p).cast("B")) for p in payloads
            ]
            assert [await rx.receive() for _ in range(100)] == [b"burst"] * 100
            await rx.aclose()
            with pytest.raises(anyio.BrokenResourceError):
                while True:  # the peer's close (a reset, over TCP) may take a send or two to show
                    await tx.send(b"late")
                    await anyio.lowlevel.checkpoint()  # the end of the burst: its write fails


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_a_round_trips_send_schedules_nothing_and_a_burst_still_coalesces(kind: str) -> None:
    # The echo is a task of this loop, so that the ping's receive always parks (the loop iterates).
    a, b = _pair(kind)
    ping = aioipc.framed(aioipc.sockets.from_socket(a), max_size=4096)
    echo = aioipc.framed(aioipc.sockets.from_socket(b), max_size=4096)
    sender = ping.transport_stream.sender

    async def echo_all() -> None:
        async for message in echo:
            await echo.send(message)

    with anyio.fail_after(10):
        async with ping, echo, anyio.create_task_group() as tg:
            tg.start_soon(echo_all)
            for payload in (b"a", b"x" * 2043, b"y" * 2044, b"z" * 3000):  # one write, up to writev's 2 parts
                await ping.send(payload)
                assert sender._flush_handle is None  # written at once, nothing scheduled
                assert await ping.receive() == payload  # parked: the next send is a lone one again
            for number in range(50):
                await ping.send(b"%02d" % number)
            # the first two written at once, the second scheduling the end of the burst; the rest queued
            assert sender._flush_handle is not None
            assert len(sender._pending) == 48 * (4 + 2)
            assert [await ping.receive() for _ in range(50)] == [b"%02d" % n for n in range(50)]
            tg.cancel_scope.cancel()
