"""Helpers shared by the test modules: running examples, small programs and child services as a user would."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import aioipc.process
from aioipc.testing import Fairness

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_python(
    *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` from the examples folder, bounded by ``timeout``; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else dict(env),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_example(*args: str, timeout: float = 60) -> list[str]:
    """Run ``examples/SCRIPT ARGS`` (or ``-m MODULE ARGS``) and return its output lines."""
    return run_python(*args, timeout=timeout).stdout.splitlines()


async def run_tool(*argv: str | os.PathLike[str], timeout: float = 30) -> str:
    """Run a program (a C helper the test compiled, say) to completion; it must exit 0; return its output."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with anyio.fail_after(timeout):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def loop_name() -> str:
    return "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"


class Service:
    """A Python script run as a child, with its stdout read line by line."""

    def __init__(self, proc: aioipc.process.Process) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.pid = proc.pid
        self._lines = BufferedByteReceiveStream(proc.stdout)

    async def line(self) -> str:
        return (await self._lines.receive_until(b"\n", 65536)).decode()

    async def expect(self, *lines: str) -> None:
        for expected in lines:
            assert await self.line() == expected

    async def rest(self) -> list[str]:
        """Every line until the service closes its stdout."""
        lines = []
        try:
            while True:
                lines.append(await self.line())
        except anyio.IncompleteRead:
            return lines


@asynccontextmanager
async def service(tmp_path: Path, source: str, *args: str, channel: bool = False) -> AsyncIterator[Service]:
    """Run ``source`` as a script with the current loop's name as its first argument."""
    script = tmp_path / f"service_{os.urandom(4).hex()}.py"
    script.write_text(textwrap.dedent(source))
    proc = await aioipc.process.spawn(
        [sys.executable, str(script), loop_name(), *args], stdout=aioipc.process.PIPE, channel=channel
    )
    async with proc:
        yield Service(proc)


async def shell_kill(signame: str, pid: int) -> None:
    """Send a signal with the shell's ``kill`` command, a program we did not write."""
    proc = await aioipc.process.spawn(["sh", "-c", f"kill -{signame} {pid}"], channel=False)
    async with proc:
        assert await proc.wait() == 0


async def until(condition: Callable[[], object], timeout: float = 10) -> None:
    """Check ``condition()`` about every millisecond until it is true; ``TimeoutError`` after ``timeout`` s.

    For a state another process or thread changes with no event to wait on. It
    sleeps between checks rather than spinning on ``sleep(0)``, which would
    take a whole CPU from the peers under test on a small machine.
    """
    with anyio.fail_after(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def assert_fair(seen: Fairness, what: str) -> None:
    """What ``aioipc.testing.measure_fairness`` saw was fair: enough operations to judge, no
    ticker wait over 50 ms of work, and at least 2 ticker turns per 10,000 operations."""
    assert seen.received > 1000, f"only {seen.received} operations during {what}"
    assert seen.longest < 0.05, f"a ticker waited {seen.longest * 1000:.0f} ms of work during {what}"
    turns = seen.turns_per_10k
    assert turns >= 2, f"a ticker got {turns:.2f} turns per 10,000 operations during {what}"


async def keep_busy(msgs: Any, rounds: int = 8, gap: float = 0.1) -> None:
    """Echo round trips ``gap`` s apart: traffic that keeps a connection open past a short idle_timeout."""
    for i in range(rounds):
        await anyio.sleep(gap)
        await msgs.send(b"%d" % i)
        assert await msgs.receive() == b"%d" % i


def threads_and_fds() -> tuple[int, int]:
    """This process's live threads and open fds, to compare before and after an attack."""
    return threading.active_count(), len(os.listdir("/proc/self/fd"))


async def back_to(baseline: tuple[int, int], timeout: float = 10) -> None:
    """Wait (at most ``timeout`` seconds) until no more threads and fds are open than at ``baseline``."""
    await until(
        lambda: all(now <= then for now, then in zip(threads_and_fds(), baseline, strict=True)), timeout
    )


async def abandon_semaphore_waits(sem: Any) -> None:
    """200 timed-out and 200 cancelled waits on an empty semaphore (POSIX or System V): each
    must end its kernel wait at once, leaving no thread, fd or waiter to take a later unit."""
    baseline = threads_and_fds()
    with anyio.fail_after(30):
        for _ in range(200):
            with pytest.raises(TimeoutError):
                await sem.acquire(timeout=0.002)
        for _ in range(200):
            with anyio.move_on_after(0.001):
                await sem.acquire()
        await back_to(baseline)
        sem.release()
        await back_to(baseline)  # no waiter is left to take the unit
    assert sem.value == 1


@dataclass
class Daemon:
    """A private ``dbus-daemon`` (see the ``daemon`` fixture)."""

    process: subprocess.Popen[str]
    address: str

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@dataclass
class NatsServer:
    """A private ``nats-server`` on a free loopback port (see the ``nats_server`` fixture)."""

    process: subprocess.Popen[str]
    url: str

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def start_nats_server() -> NatsServer:
    """Start ``nats-server`` on 127.0.0.1 with a port it picks; wait until it accepts clients."""
    exe = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")
    if exe is None:
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    process = subprocess.Popen(
        [exe, "-a", "127.0.0.1", "-p", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    url = ""
    for line in process.stderr:  # bounded: the server exits (EOF) or says where it listens
        if "Listening for client connections on" in line:
            url = "nats://" + line.rsplit(" ", 1)[1].strip()
        if "Server is ready" in line or "Fatal" in line:
            break
    if not url:
        process.kill()
        process.wait(timeout=10)
        raise AssertionError("nats-server did not start")
    return NatsServer(process, url)


def compile_c(directory: Path, name: str, source: str, *libs: str) -> Path:
    """Build a small C program with gcc (skipping the test where gcc is missing); return its path."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = directory / f"{name}.c"
    src.write_text(source)
    exe = directory / name
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src), *libs], check=True, timeout=60)
    return exe


async def check_sends_before_their_first_step(send: Callable[[bytes], Any]) -> None:
    """``send(data)`` gives a coroutine, compiled (FastOp) or not: awaited once (it sends ``b"a"``);
    one dropped (it warns), closed, thrown into or cancelled before its first step sends nothing.
    """
    sending = send(b"a")
    assert asyncio.iscoroutine(sending)
    await sending
    with pytest.raises(RuntimeError, match="already awaited"):
        await sending
    with pytest.warns(RuntimeWarning, match="never awaited"):
        dropped = send(b"dropped")
        del dropped
    send(b"closed").close()
    with pytest.raises(KeyError):
        send(b"thrown").throw(KeyError("thrown"))
    unstarted = asyncio.create_task(send(b"cancelled"))
    unstarted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unstarted


async def check_ops_are_coroutines(
    send: Callable[[bytes], Any], receive: Callable[[], Any], holds_one: Callable[[], bool]
) -> None:
    """``send(data)`` and ``receive()`` of an empty queue give coroutines, compiled (FastOp) or not:
    awaited once; one dropped, closed or thrown into before its first step does nothing (and a
    dropped one warns); a receive parked then cancelled, or cancelled before it started, takes
    nothing. ``holds_one()``: whether the queue holds one message. Leaves the queue empty.
    """
    await check_sends_before_their_first_step(send)
    receive().close()
    assert holds_one(), "an operation that never ran sent or took a message"
    assert await receive() == b"a"
    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()  # parked
        tg.cancel_scope.cancel()
    unstarted = asyncio.create_task(receive())
    unstarted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unstarted


async def check_echoed_ops_are_coroutines(stream: Any) -> None:
    """:func:`check_ops_are_coroutines` for a stream whose peer sends every message back
    upper-cased: only what was sent comes back, and a receive parked then cancelled, or cancelled
    before it started (with messages waiting), takes nothing.
    """
    await check_sends_before_their_first_step(stream.send)
    assert await stream.receive() == b"A"
    receiving = asyncio.create_task(stream.receive())
    await stream.send(b"b")
    assert await receiving == b"B", "a send() that never ran sent its message"
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.send, b"c")
    assert await stream.receive() == b"C"
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.receive)  # parks in the slow path: nothing comes
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    for letter in b"def":
        await stream.send(bytes([letter]))
    assert await stream.receive() == b"D", "a cancelled receive() took a message"
    unstarted = asyncio.create_task(stream.receive())  # E may wait in what D came with
    unstarted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unstarted
    assert [await stream.receive() for _ in range(2)] == [b"E", b"F"], "a cancelled receive() took E"
