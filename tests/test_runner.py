"""``aioipc.run(..., exit_quietly=True)``: Ctrl-C and plain ``kill`` end a program cleanly and quietly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import anyio
import posix_ipc
import pytest
from helpers import loop_name

PROGRAM = """
import sys
import anyio
import aioipc

async def main(name):
    async with await aioipc.mq.open(name, create=True):
        print("ready", flush=True)
        await anyio.sleep(60)

aioipc.run(main(sys.argv[2]), loop=sys.argv[1], exit_quietly=True)
"""


@pytest.mark.parametrize("signame", ["INT", "TERM"])
async def test_a_signal_cancels_main_cleans_up_and_exits_128_plus_signum(
    signame: str, tmp_path: Path, unique_name: str
) -> None:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    name = f"/{unique_name}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        loop_name(),
        name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        with anyio.fail_after(30):
            assert await proc.stdout.readline() == b"ready\n"
            kill = await asyncio.create_subprocess_exec("sh", "-c", f"kill -{signame} {proc.pid}")
            assert await kill.wait() == 0
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # the test failed before the program ended: end it, remove its queue
            proc.kill()
            await proc.wait()
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_message_queue(name)
    assert proc.returncode == (130 if signame == "INT" else 143)
    assert err == b""  # no traceback
    with pytest.raises(posix_ipc.ExistentialError):  # the queue it created is gone
        posix_ipc.MessageQueue(name)


OTHER_THREAD = """
import asyncio, signal, sys, threading, time
import aioipc

async def main():
    worker = threading.Thread(target=time.sleep, args=(60,), daemon=True)
    worker.start()
    print("ready", flush=True)
    # the kernel may hand a process's signal to any thread: here it is the worker's, while
    # the main thread is parked in the loop's poll
    signal.pthread_kill(worker.ident, getattr(signal, sys.argv[2]))
    await asyncio.sleep(60)

aioipc.run(main(), loop=sys.argv[1], exit_quietly=True)
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
async def test_a_signal_that_another_thread_receives_still_stops_main(signame: str, tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(OTHER_THREAD)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), loop_name(), signame, stdout=asyncio.subprocess.PIPE
    )
    try:
        with anyio.fail_after(20):
            assert await proc.wait() == (130 if signame == "SIGINT" else 143)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


_WHICH_LOOP = """
import asyncio
import aioipc

async def main():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]

print(aioipc.run(main()))
"""


@pytest.mark.parametrize(("chosen", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_aioipc_loop_picks_the_loop_of_run_auto(chosen: str, module: str) -> None:
    env = {**os.environ, "AIOIPC_LOOP": chosen}
    out = subprocess.run(
        [sys.executable, "-c", _WHICH_LOOP], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == module


def test_an_unknown_aioipc_loop_is_a_clear_error() -> None:
    env = {**os.environ, "AIOIPC_LOOP": "trio"}
    out = subprocess.run(
        [sys.executable, "-c", _WHICH_LOOP], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode != 0
    assert "AIOIPC_LOOP must be 'auto', 'asyncio' or 'uvloop', not 'trio'" in out.stderr
