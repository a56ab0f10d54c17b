"""``aioipc sub`` and ``aioipc pub``, run as a user would run them (plain tests: the command picks
its own loop, so running them on both of ours would only double the time)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from helpers import NatsServer

AIOIPC = [sys.executable, "-m", "aioipc"]
PIPE = subprocess.PIPE


def start(*args: str, expect: bytes | None = None) -> subprocess.Popen[bytes]:
    """Start ``aioipc ARGS``; with ``expect``, wait for its first line on stderr, which must start so."""
    proc = subprocess.Popen([*AIOIPC, *args], stdin=PIPE, stdout=PIPE, stderr=PIPE)
    if expect is not None:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # bounded by the test timeout: the command prints it at once
        assert line.startswith(expect), line
    return proc


def finish(proc: subprocess.Popen[bytes], stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(stdin, timeout=30)
    assert b"Traceback" not in err, err
    return proc.returncode, out, err


def test_pub_binds_waits_for_subscribers_and_publishes(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'ev.sock'}"
    pub = start("pub", address, "orders.new", "-", "--wait-subscribers", "2", expect=b"publishing")
    orders = start("sub", address, "orders.>", expect=b"subscribed")
    users = start("sub", address, "users.*", "--count", "1", expect=b"subscribed")
    assert finish(pub, b"first\nsecond\n") == (0, b"", b"")
    assert finish(orders) == (0, b"orders.new first\norders.new second\n", b"")
    assert finish(users) == (0, b"", b"")
    assert not (tmp_ipc_dir / "ev.sock").exists()


def test_sub_waits_for_a_publisher_to_appear(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'ev.sock'}"
    sub = start("sub", address, ">", "--count", "1", "--wait", "20")
    pub = start("pub", address, "a.b", "hello world", expect=b"publishing")
    assert finish(sub)[:2] == (0, b"a.b hello world\n")
    assert finish(pub) == (0, b"", b"")


def test_errors_are_one_line_and_leave_nothing_behind(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'ev.sock'}"
    code, _, err = finish(start("pub", address, "a", "x", "--timeout", "0.2"))
    assert (code, err) == (1, b"publishing at " + address.encode() + b"\n"
                           b"aioipc: error: fewer than 1 subscribers came within 0.2 s\n")  # fmt: skip
    assert not (tmp_ipc_dir / "ev.sock").exists()
    for args in (["sub", address, "a"], ["sub", address, "a..b"]):
        code, _, err = finish(start(*args))
        assert code == 1
        assert err.startswith(b"aioipc: error: "), err
        assert err.count(b"\n") == 1, err


def test_ctrl_c_and_sigterm_end_them_quietly(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'ev.sock'}"
    pub = start("pub", address, "a", "-", expect=b"publishing")
    sub = start("sub", address, "a", expect=b"subscribed")
    sub.send_signal(signal.SIGINT)
    assert finish(sub) == (128 + signal.SIGINT, b"", b"")
    pub.send_signal(signal.SIGTERM)  # while it waits for a line of input
    assert finish(pub)[:2] == (128 + signal.SIGTERM, b"")
    assert not (tmp_ipc_dir / "ev.sock").exists()


def test_pub_and_sub_over_nats(nats_server: NatsServer) -> None:
    sub = start("sub", nats_server.url, "orders.>", "--count", "2", expect=b"subscribed")
    for subject, message in (("users.new", "no"), ("orders.new", "one"), ("orders.eu.paid", "two")):
        assert finish(start("pub", nats_server.url, subject, message)) == (0, b"", b"")
    assert finish(sub) == (0, b"orders.new one\norders.eu.paid two\n", b"")
