"""The socket examples, run as a user runs them (no arguments: each demo starts its own peers)."""

from __future__ import annotations

import os
import re

import pytest
from helpers import run_example

pytestmark = pytest.mark.usefixtures("example_loop")  # each example runs on both loops


def test_tcp_echo() -> None:
    lines = run_example("tcp_echo.py")
    assert re.fullmatch(r"echo server on tcp:127\.0\.0\.1:\d+", lines[0])
    assert lines[1:] == ["echo: hello", "echo: async", "echo: world", "client exited with 0"]


def test_unix_echo_server_removes_its_file_on_ctrl_c() -> None:
    lines = run_example("unix_echo_server.py")
    assert lines[0].startswith("server says: serving on unix:/")
    assert lines[1:] == [
        "echo: hello over a unix socket",
        "server says: stopped; socket file removed: True",
        "socket file still there: False",
    ]


@pytest.mark.parametrize(("clients", "limit"), [("50", "25"), ("6", "2")])
def test_concurrent_server(clients: str, limit: str) -> None:
    lines = run_example("concurrent_server.py", clients, limit)
    assert lines[0].startswith(f"{clients} clients served in ")
    assert lines[1] == f"handlers running at once: at most {limit} (max_connections={limit})"


def test_fd_passing() -> None:
    assert run_example("fd_passing.py") == [
        "child read 59 bytes through the fd (temporary file): "
        "a file with no name, reachable only through its descriptor",
        "child exited with 0",
    ]


def test_peer_credentials() -> None:
    lines = run_example("peer_credentials.py")
    assert len(lines) == 6
    for started, server, client in (lines[0:3], lines[3:6]):
        pid = re.fullmatch(r"\(started client pid (\d+)\)", started)
        assert pid is not None
        assert server == f"server: connection from pid {pid[1]}, uid {os.getuid()}, gid {os.getgid()}"
        assert re.fullmatch(rf"client {pid[1]}: you are pid {pid[1]}; server is pid \d+", client)
