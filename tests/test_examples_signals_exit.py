"""Every long-running example stops quietly and cleanly on Ctrl-C (SIGINT) and on a plain ``kill`` (SIGTERM).

Quietly: exit status 0 or 128+signum and nothing on stderr (no traceback).
Cleanly: the object it announced (the first address in its ready line)
is gone afterwards. A new long-running example is one line in
``LONG_RUNNING``: its script, its arguments, and the start of the line it
prints once ready, naming the address of what it created.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import posix_ipc
import pytest
from helpers import EXAMPLES

import aioipc.sysv
from aioipc._core.schemes import SCHEMES, parse_address

pytestmark = pytest.mark.usefixtures("example_loop")  # each example runs on both loops

_PROJ = os.getpid() % 200 + 50  # ftok project ids no other test of this run uses

# script, arguments ({name}: a unique name, {tmp}: a private directory, {proj}: an ftok id), ready line
LONG_RUNNING = [
    ("mq_receiver.py", ["--alone", "--name", "/{name}"], "receiving on "),
    ("sysv_mq_receiver.py", ["--alone", "--proj", "{proj}"], "receiving on "),
    ("fifo_log_collector.py", ["--forever"], "collecting from "),
    ("unix_echo_server.py", ["{tmp}/echo.sock"], "serving on "),
    ("tcp_echo.py", ["server", "127.0.0.1:0"], "echo server on "),
    ("rpc_service.py", ["unix:{tmp}/math.sock"], "serving on "),
    ("spool_worker.py", ["{tmp}/spool"], "serving spool:"),  # a spool is durable: it stays, by design
]


_ADDRESS = re.compile(r"\b(?:" + "|".join(map(re.escape, SCHEMES)) + r"):[^\s;,]+")


def exists(address: str) -> bool:
    """Whether the object at ``address`` is still there."""
    parsed = parse_address(address)
    if parsed.scheme == "mq":
        try:
            posix_ipc.MessageQueue(parsed.path).close()
        except posix_ipc.ExistentialError:
            return False
        return True
    if parsed.scheme == "sysvmq":
        return parsed.key in [q.key & 0xFFFFFFFF for q in aioipc.sysv.list_message_queues()]
    if parsed.scheme in ("fifo", "unix"):
        return os.path.lexists(parsed.path)
    return False  # tcp: nothing left in the file system or the kernel's IPC namespace


def start(script: str, args: list[str], ready: str) -> tuple[subprocess.Popen[str], str]:
    """Start the example; return it and the address its ready line names."""
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        cwd=EXAMPLES,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(30, proc.kill)  # bounds the blocking readline below
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        watchdog.cancel()
    assert line.startswith(ready), (line, proc.stderr.read() if proc.stderr else "")
    [address] = _ADDRESS.findall(line)[:1]
    return proc, address


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(("script", "args", "ready"), LONG_RUNNING, ids=[entry[0] for entry in LONG_RUNNING])
def test_example_exits_quietly_and_leaves_nothing(
    script: str, args: list[str], ready: str, how: str, unique_name: str, tmp_path: Path
) -> None:
    proj = _PROJ + (how == "SIGTERM")  # the two signals' runs may overlap with pytest-xdist
    args = [arg.format(name=unique_name, tmp=tmp_path, proj=proj) for arg in args]
    proc, address = start(script, args, ready)
    with proc:
        if how == "SIGINT":
            os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        else:
            subprocess.run(["sh", "-c", f"kill {proc.pid}"], check=True, timeout=30)  # a plain `kill`
        _, err = proc.communicate(timeout=30)
    signum = signal.Signals[how]
    assert proc.returncode in (0, 128 + signum), (proc.returncode, err)
    assert err == ""
    assert not exists(address), f"{script} left {address} behind after {how}"


async def test_a_leftover_queue_names_the_cleanup_command(unique_name: str) -> None:
    async with await aioipc.mq.open(f"/{unique_name}", create=True, max_messages=1, max_message_size=64):
        proc = subprocess.run(
            [sys.executable, "mq_receiver.py", "--alone", "--name", f"/{unique_name}"],
            cwd=EXAMPLES,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"the queue mq:/{unique_name} exists: if no receiver runs, remove it: aioipc rm mq:/{unique_name}"
    )
