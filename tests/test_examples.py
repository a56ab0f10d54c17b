"""The pipe and FIFO examples, and the demo, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aioipc import demo

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(*argv: str, timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_demo_moves_messages_over_every_mechanism(loop: str) -> None:
    out = run(sys.executable, "-m", "aioipc.demo", "--loop", loop, "--quick")
    assert f"aioipc tour on {loop}" in out
    assert "failed" not in out, out
    for mechanism in demo.MECHANISMS:
        assert any(line.startswith(mechanism) and "µs" in line for line in out.splitlines()), out


def test_pipe_parent_child_example() -> None:
    out = run(sys.executable, str(EXAMPLES / "pipe_parent_child.py"))
    assert out.splitlines() == [
        "child got request 0",
        "child got request 1",
        "child got request 2",
        "child exited with 0",
    ]


def test_fifo_log_collector_example() -> None:
    out = run(sys.executable, str(EXAMPLES / "fifo_log_collector.py"))
    lines = out.splitlines()
    assert len(lines) == 21
    assert sorted(line.split("] ")[1] for line in lines[1:]) == sorted(f"job {i} done" for i in range(1, 21))
