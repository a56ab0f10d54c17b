"""The signal, shutdown, reload and master/worker examples, run as a user runs them."""

from __future__ import annotations

import re

import pytest
from helpers import run_example

pytestmark = pytest.mark.usefixtures("example_loop")  # each example runs on both loops


def test_signal_receiver_counts_each_acknowledged_sigusr1() -> None:
    lines = run_example("signal_receiver.py")
    assert re.fullmatch(r"receiver \d+ waiting for SIGUSR1 and SIGUSR2", lines[0])
    assert lines[1:] == [
        "SIGUSR1 #1",
        "SIGUSR1 #2",
        "SIGUSR1 #3",
        "SIGUSR2: the sender is done after 3 SIGUSR1",
        "sender exited with 0",
    ]


def test_graceful_shutdown_runs_the_hooks_in_order() -> None:
    lines = run_example("graceful_shutdown.py")
    assert lines[0].startswith("serving on unix:")
    assert lines[1:] == [
        "client got: done: resize image",
        "client got: done: send mail",
        "hook: flushed 2 journal entries",
        "hook: removed the socket directory",
        "stopped by SIGTERM; hooks that failed: 0",
    ]


def test_sighup_reload_keeps_the_last_good_configuration() -> None:
    lines = run_example("sighup_reload.py")
    assert lines[0] == "started with: {'workers': 2, 'greeting': 'hello'}"
    assert lines[1] == "reloaded: {'workers': 8, 'greeting': 'bonjour'}"
    assert lines[2].startswith("bad configuration (")
    assert lines[2].endswith("keeping {'workers': 8, 'greeting': 'bonjour'}")
    assert lines[3:] == ["stopped by SIGTERM with {'workers': 8, 'greeting': 'bonjour'}"]


def test_master_stops_its_workers_in_parallel() -> None:
    lines = run_example("master_workers.py")
    assert lines[:12] == [f"job {n}: squared {n * n}" for n in range(12)]
    farewells = lines[12:16]
    assert all(re.fullmatch(r"worker \d+: stopping after 3 jobs", line) for line in farewells), farewells
    assert len(set(farewells)) == 4
    assert lines[16:] == ["workers exited with [0, 0, 0, 0]", "master stopped by SIGTERM"]
