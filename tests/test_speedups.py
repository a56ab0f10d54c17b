"""The accelerator: which implementation runs, and the C frame parser against the Python one."""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    buffer: bytes, start: int, end: int, max_size: int, batch: int
) -> tuple[list[bytes], int, int, int]:
    """``Framer._parse_python`` over ``buffer[start:end]``: messages, next start, need, bad size or -1."""
    framer = framing.Framer(max_size)
    framer._buf = bytearray(buffer)
    framer._view = memoryview(framer._buf)
    framer._start, framer._end = start, end
    saved = framing.PARSE_BATCH
    setattr(framing, "PARSE_BATCH", batch)  # read by _parse at each call  # noqa: B010
    try:
        framer._parse_python()
    finally:
        setattr(framing, "PARSE_BATCH", saved)  # noqa: B010
    next_start = end if framer._start == framer._end == 0 else framer._start
    bad = -1 if framer._error is None else framer._error.size
    return list(framer.parsed), next_start, framer._need, bad


frames = st.lists(st.binary(max_size=40), max_size=30)


@pytest.mark.skipif(speedups.parse_frames is None, reason="the accelerator is not in use")
@given(frames, st.integers(0, 4), st.integers(0, 50), st.integers(1, 40), st.binary(max_size=3))
def test_the_c_frame_parser_parses_as_the_framer_does(
    messages: list[bytes], cut: int, max_size: int, batch: int, junk: bytes
) -> None:
    wire = (
        b"".join(framing.Framer.encode(m) for m in messages) + struct.pack(">I", 100 + cut)[: cut or 4] + junk
    )
    buffer = b"??" + wire + b"!!"  # both keep to start..end
    assert speedups.parse_frames is not None
    got: list[bytes] = []
    start, need, bad = speedups.parse_frames(buffer, 2, 2 + len(wire), max_size, batch, got.append)
    assert (got, start, need, bad) == framer_parse(buffer, 2, 2 + len(wire), max_size, batch)


@pytest.mark.skipif(speedups.parse_frames is None, reason="the accelerator is not in use")
def test_the_c_frame_parser_refuses_bounds_outside_the_buffer() -> None:
    assert speedups.parse_frames is not None
    with pytest.raises(ValueError, match="within the buffer"):
        speedups.parse_frames(b"abc", 0, 4, 10, 10, print)
    with pytest.raises(ValueError, match="within the buffer"):
        speedups.parse_frames(b"abc", 2, 1, 10, 10, print)
