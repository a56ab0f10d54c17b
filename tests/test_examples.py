"""The pipe and FIFO examples, and the demo, run as a user runs them."""

from __future__ import annotations

import pytest
from helpers import run_example

from aioipc import demo


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_demo_moves_messages_over_every_mechanism(loop: str) -> None:
    out = "\n".join(run_example("-m", "aioipc.demo", "--loop", loop, "--quick"))
    assert f"aioipc tour on {loop}" in out
    assert "failed" not in out, out
    for mechanism in demo.MECHANISMS:
        assert any(line.startswith(mechanism) and "µs" in line for line in out.splitlines()), out


@pytest.mark.usefixtures("example_loop")
def test_pipe_parent_child_example() -> None:
    assert run_example("pipe_parent_child.py") == [
        "child got request 0",
        "child got request 1",
        "child got request 2",
        "child exited with 0",
    ]


@pytest.mark.usefixtures("example_loop")
def test_fifo_log_collector_example() -> None:
    lines = run_example("fifo_log_collector.py")
    assert len(lines) == 21
    assert sorted(line.split("] ")[1] for line in lines[1:]) == sorted(f"job {i} done" for i in range(1, 21))
