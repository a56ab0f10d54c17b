"""The aioipc command on a newcomer's path: waiting, flags, help, ls, and every error as one plain line."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from helpers import loop_name

import aioipc.mq
from aioipc.cli import main

AIOIPC = [sys.executable, "-m", "aioipc"]


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *AIOIPC,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    with anyio.fail_after(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


def run_cli_once(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The command run once (not per loop: where the loop plays no part)."""
    proc = subprocess.run([*AIOIPC, *args], capture_output=True, text=True, timeout=30, check=False, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def main_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``aioipc.cli.main(args)`` here, for parsing and errors (a new interpreter per call is slow)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    [line] = err.splitlines()
    assert line.startswith("aioipc: error: "), line
    assert "\\x00" not in line, line
    assert "unexpected keyword" not in line, line
    assert not re.search(r"\b_\w*\(\)", line), line  # no internal function names
    return line


@pytest.mark.parametrize("scheme", ["mq", "sysvmq", "shm", "unix", "fifo"])
def test_send_timeout_waits_then_names_the_address(scheme: str, unique_name: str, tmp_ipc_dir: Path) -> None:
    address = {
        "mq": f"mq:/{unique_name}",
        "sysvmq": f"sysvmq:{int.from_bytes(os.urandom(3)) + 0x7A000000:#x}",
        "shm": f"shm:/{unique_name}",
        "unix": f"unix:{tmp_ipc_dir / 'absent.sock'}",
        "fifo": f"fifo:{tmp_ipc_dir / 'absent.fifo'}",
    }[scheme]
    start = time.monotonic()
    code, _, err = run_cli_once("send", "--timeout", "0.3", address, "hi")
    assert code == 1
    line = one_error_line(err)
    assert f"nothing answered at {address} within 0.3 s" in line
    assert time.monotonic() - start >= 0.3


async def test_send_timeout_waits_for_a_receiver_that_starts_later(tmp_ipc_dir: Path) -> None:
    address = f"unix:{tmp_ipc_dir / 'later.sock'}"
    with anyio.fail_after(30):
        sender = await asyncio.create_subprocess_exec(
            *AIOIPC, "send", "--timeout", "20", address, "late hello", stderr=asyncio.subprocess.PIPE
        )
        receiver = await asyncio.create_subprocess_exec(
            *AIOIPC, "recv", address, "--count", "1", "--loop", loop_name(), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await receiver.communicate()
        _, err = await sender.communicate()
    assert sender.returncode == 0, err
    assert receiver.returncode == 0
    assert out == b"late hello\n"


def test_global_flags_after_the_command_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main_in_process(capsys, "schemes", "--loop", "asyncio")
    assert code == 0
    assert "mq:/name" in out
    code, out, _ = main_in_process(capsys, "schemes", "--loop=uvloop")
    assert code == 0
    code, out, _ = run_cli_once("--version")
    assert code == 0
    assert out.startswith("aioipc ")


def test_help_shows_an_example_for_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main_in_process(capsys, "--help")
    assert code == 0
    examples = out.split("examples:")[1].split("addresses:")[0]
    for command in ("send", "recv", "relay", "schemes", "ls", "rm"):
        assert f"aioipc {command}" in examples
        code, sub, _ = main_in_process(capsys, command, "--help")
        assert code == 0
        assert f"example: aioipc {command}" in sub


async def test_recv_lines_counts_shell_echos_and_removes_its_fifo(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "echo.fifo"
    with anyio.fail_after(30):
        receiver = await asyncio.create_subprocess_exec(
            *AIOIPC, "recv", "--lines", f"fifo:{path}", "--count", "2", "--loop", loop_name(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert receiver.stderr is not None
        assert (await receiver.stderr.readline()).startswith(b"receiving at")
        shell = await asyncio.create_subprocess_exec("sh", "-c", f"echo one > {path}; echo two > {path}")
        assert await shell.wait() == 0
        out, err = await receiver.communicate()
    assert receiver.returncode == 0, err
    assert out == b"one\ntwo\n"
    assert not path.exists()


def test_recv_count_with_raw_bytes_is_refused(tmp_ipc_dir: Path) -> None:
    code, _, err = run_cli_once("recv", "--raw", "--count", "2", f"fifo:{tmp_ipc_dir / 'raw.fifo'}")
    assert code == 1
    assert "--count counts messages" in one_error_line(err)
    assert not (tmp_ipc_dir / "raw.fifo").exists()


def test_ls_lists_what_a_killed_receiver_left_and_rm_removes_it(tmp_ipc_dir: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_ipc_dir)}
    fifo, sock = tmp_ipc_dir / "left.fifo", tmp_ipc_dir / "left.sock"
    for address in (f"fifo:{fifo}", f"unix:{sock}"):
        with subprocess.Popen([*AIOIPC, "recv", address], stderr=subprocess.PIPE, env=env) as proc:
            assert proc.stderr is not None
            assert proc.stderr.readline().startswith(b"receiving at")
            proc.kill()  # a crash: nothing is cleaned up
    code, out, _ = run_cli_once("ls", env=env)
    assert code == 0
    assert f"fifo:{fifo}" in out
    assert f"unix:{sock}" in out
    code, out, err = run_cli_once("rm", f"fifo:{fifo}", f"unix:{sock}", env=env)
    assert code == 0, err
    code, out, _ = run_cli_once("ls", env=env)
    assert "left." not in out
    assert not fifo.exists()
    assert not sock.exists()
    for note in (tmp_ipc_dir / "aioipc").iterdir():
        note.unlink()
    (tmp_ipc_dir / "aioipc").rmdir()


def test_rm_stale_removes_the_doorbells_of_a_ring_whose_creator_died(unique_name: str) -> None:
    bells = [Path(f"/dev/shm/{unique_name}.bell-{side}") for side in "ca"]
    for bell in bells:  # what a process killed inside Ring.create() leaves
        os.mkfifo(bell, 0o600)
        os.utime(bell, (time.time() - 60, time.time() - 60))
    try:
        code, out, err = run_cli_once("rm", "--stale")
        assert code == 0, err
        assert f"shm:/{unique_name}.bell-c" in out
        assert not any(bell.exists() for bell in bells)
    finally:
        for bell in bells:
            bell.unlink(missing_ok=True)


async def test_ls_shows_a_posix_queue_aioipc_created_and_notes_the_mount_once(unique_name: str) -> None:
    mounted = os.path.ismount(aioipc.mq.MOUNT_POINT)  # noqa: ASYNC240 (one stat)
    async with await aioipc.mq.open(f"/{unique_name}", create=True, max_messages=1, max_message_size=64):
        code, out, err = await run_cli("ls")
    assert code == 0
    assert f"mq:/{unique_name}" in out
    assert err.count("note:") <= 1
    if not mounted:
        assert "mount -t mqueue none /dev/mqueue" in err


def test_ls_dbus_without_a_bus_says_so() -> None:
    code, _, err = run_cli_once("ls", "--dbus", "unix:path=/nonexistent/aioipc-bus")
    assert code == 1
    assert "cannot reach the D-Bus" in one_error_line(err)


def test_an_existing_fifo_names_the_cleanup_command(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "there.fifo"
    os.mkfifo(path, 0o600)
    code, _, err = run_cli_once("recv", f"fifo:{path}")
    assert code == 1
    line = one_error_line(err)
    assert f"aioipc rm fifo:{path}" in line
    assert "exist_ok" not in line


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "unix:@aioipc-test-nobody-here", "hi"],
        ["send", "mq:/aioipc-test-nobody-here", "hi"],
        ["send", "tcp:127.0.0.1:1", "hi"],
        ["send", "udp:127.0.0.1:99999", "hi"],
        ["send", "nope:/x", "hi"],
        ["send", "sd-listen:", "hi"],
        ["recv", "sd-listen:"],
        ["recv", "fifo:/nonexistent/dir/x.fifo"],
        ["recv", "--connect", "shm:/aioipc-test-nobody-here"],
        ["relay", "unix:@aioipc-test-relay", "bogus:x"],
        ["rm", "mq:/aioipc-test-nobody-here"],
        ["rm", "unix:@abstract"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_every_error_is_one_plain_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = main_in_process(capsys, *argv)
    assert code == 1
    one_error_line(err.replace("aioipc: error: rm", "x") if argv[0] == "rm" else err)


def test_usage_errors_exit_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["frobnicate"], ["send"], ["recv", "--count", "x", "mq:/a"], ["--loop", "tokio", "ls"]):
        code, _, err = main_in_process(capsys, *argv)
        assert code == 2
        assert "usage: aioipc" in err
