"""The files and spool examples, run as a user runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import anyio
import pytest
from helpers import EXAMPLES, run_example

import aioipc.files

pytestmark = pytest.mark.usefixtures("example_loop")  # each example runs on both loops


async def start_example(script: str, *args: str) -> asyncio.subprocess.Process:
    """``python examples/SCRIPT ARGS`` as a service, its output and errors piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def test_config_reloader_follows_atomic_and_editor_saves() -> None:
    lines = run_example("config_reloader.py")
    assert lines[:2] == ["loaded: {'workers': 2}", "loaded: {'workers': 8}"]
    assert lines[2].startswith("bad configuration (")
    assert lines[2].endswith("keeping {'workers': 8}")
    assert lines[3:] == ["loaded: {'workers': 4}", "stopped by SIGTERM with {'workers': 4}"]


def test_spool_worker_demonstration() -> None:
    assert run_example("spool_worker.py") == [
        "done: resize cat.jpg",
        "done: send mail to ana",
        "done: rotate logs",
        "done: compress backups",
        "stopped by SIGTERM after 4 jobs",
    ]


async def test_spool_worker_fed_from_the_shell_stops_quietly_on_ctrl_c(tmp_path: Path) -> None:
    spool = tmp_path / "jobs"
    worker = await start_example("spool_worker.py", str(spool))
    assert worker.stdout is not None
    with anyio.fail_after(30):
        assert (await worker.stdout.readline()).startswith(b"serving spool:")
        enqueue = (await worker.stdout.readline()).decode().replace("printf job", "printf 'from the shell'")
        shell = await asyncio.create_subprocess_exec("sh", "-ec", enqueue)
        assert await shell.wait() == 0
        assert await worker.stdout.readline() == b"done: from the shell\n"
        worker.send_signal(signal.SIGINT)
        out, err = await worker.communicate()
    assert worker.returncode == 0, err
    assert out == b"stopped by SIGINT after 1 jobs\n"
    assert err == b""
    assert {sub: os.listdir(spool / sub) for sub in ("tmp", "new", "cur", "bad")} == {
        "tmp": [],
        "new": [],
        "cur": [],
        "bad": [],
    }


async def test_config_reloader_on_a_users_file_stops_quietly_on_sigterm(tmp_path: Path) -> None:
    conf = tmp_path / "app.json"
    reloader = await start_example("config_reloader.py", str(conf))
    assert reloader.stdout is not None
    with anyio.fail_after(30):
        assert await reloader.stdout.readline() == b"no configuration yet; keeping None\n"
        await aioipc.files.write_atomic(conf, b'{"workers": 3}')
        assert await reloader.stdout.readline() == b"loaded: {'workers': 3}\n"
        reloader.send_signal(signal.SIGTERM)
        out, err = await reloader.communicate()
    assert reloader.returncode == 0, err
    assert out == b"stopped by SIGTERM with {'workers': 3}\n"
    assert err == b""
    assert os.listdir(tmp_path) == ["app.json"]
