"""The shared-memory, semaphore and file-lock examples, run as a user runs them."""

from __future__ import annotations

import pytest
from helpers import run_example

pytestmark = pytest.mark.usefixtures("example_loop")  # each example runs on both loops


def test_writer_and_reader_hand_over_shared_memory_with_semaphores() -> None:
    assert run_example("shm_writer_reader.py") == [
        "reader got: hello",
        "reader got: from the writer",
        "reader got: through shared memory",
        "reader exited with 0",
    ]


def test_ring_echo_between_two_processes() -> None:
    assert run_example("shm_ring_echo.py") == [
        "1000 batched requests answered",
        "echo: ping",
        "echo: hello",
        "child exited with 0",
    ]


def test_counter_updated_by_several_processes_loses_nothing() -> None:
    assert run_example("counter_processes.py") == [
        "4 workers exited with [0, 0, 0, 0]; counter = 2000 (expected 2000)"
    ]


def test_file_lock_guards_a_shared_file() -> None:
    assert run_example("file_lock_shared_file.py") == [
        "3 writers exited with [0, 0, 0]; 150 lines",
        "numbered 1 .. 150 with no gap and no repeat",
    ]
