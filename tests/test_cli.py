"""The aioipc command, run as a user would run it."""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
from pathlib import Path

import anyio

AIOIPC = [sys.executable, "-m", "aioipc"]


async def start_receiver(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *AIOIPC, "recv", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    line = await proc.stderr.readline()
    assert line.startswith(b"receiving at"), line
    return proc


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *AIOIPC,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_send_and_recv_over_a_fifo(tmp_ipc_dir: Path) -> None:
    address = f"fifo:{tmp_ipc_dir / 'cli.fifo'}"
    with anyio.fail_after(30):
        receiver = await start_receiver(address, "--count", "3")
        code, _, err = await run_cli("send", address, "-", stdin=b"one\ntwo\n")
        assert code == 0, err
        code, _, err = await run_cli("send", address, "three")
        assert code == 0, err
        out, _ = await receiver.communicate()
    assert receiver.returncode == 0
    assert out == b"one\ntwo\nthree\n"
    assert not (tmp_ipc_dir / "cli.fifo").exists()


async def test_bad_address_is_a_clear_error() -> None:
    with anyio.fail_after(30):
        code, _, err = await run_cli("send", "nope:/x", "hi")
    assert code == 1
    assert b"unknown scheme 'nope'" in err
    assert b"fifo" in err


async def test_help_for_each_command() -> None:
    with anyio.fail_after(30):
        for command in ("send", "recv", "relay"):
            code, out, _ = await run_cli(command, "--help")
            assert code == 0
            assert b"usage: aioipc " + command.encode() in out


async def test_missing_fifo_reader_times_out_cleanly(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "lonely.fifo"
    os.mkfifo(path, 0o600)
    with anyio.fail_after(30):
        code, _, err = await run_cli("send", f"fifo:{path}", "hi", "--timeout", "0.1")
    assert code == 1
    assert b"aioipc: error: nothing answered at fifo:" in err
    assert b"within 0.1 s" in err


async def test_relay_copies_messages_from_one_fifo_to_another(tmp_ipc_dir: Path) -> None:
    source, target = f"fifo:{tmp_ipc_dir / 'in.fifo'}", f"fifo:{tmp_ipc_dir / 'out.fifo'}"
    with anyio.fail_after(30):
        receiver = await start_receiver(target, "--count", "2")
        relay = await asyncio.create_subprocess_exec(
            *AIOIPC, "relay", source, target, stderr=asyncio.subprocess.PIPE
        )
        try:
            assert relay.stderr is not None
            assert (await relay.stderr.readline()).startswith(b"relaying")
            code, _, err = await run_cli("send", source, "-", stdin=b"first\nsecond\n")
            assert code == 0, err
            out, _ = await receiver.communicate()
        finally:
            relay.terminate()
            assert await relay.wait() == 128 + 15
    assert out == b"first\nsecond\n"
    assert not (tmp_ipc_dir / "in.fifo").exists(), "SIGTERM left the relay's FIFO behind"


async def test_ls_shows_a_segment_and_rm_removes_it(unique_name: str) -> None:
    import posix_ipc

    name = f"/{unique_name}"
    segment = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
    os.close(segment.fd)
    try:
        with anyio.fail_after(30):
            code, out, err = await run_cli("ls")
            assert code == 0, err
            [line] = [line for line in out.decode().splitlines() if f"shm:{name}" in line]
            assert line.split()[:4] == ["posix", "shm", pwd.getpwuid(os.getuid()).pw_name, "0600"]
            assert "4096 B" in line
            code, out, err = await run_cli("rm", f"shm:{name}")
            assert code == 0, err
            code, out, err = await run_cli("ls")
            assert f"shm:{name}" not in out.decode()
            code, _, err = await run_cli("rm", f"shm:{name}")
            assert code == 1
            assert b"aioipc: error:" in err
    finally:
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass
