"""Child processes: the spawn channel, pidfd waits, terminate, and a master stopping its workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from helpers import Service, loop_name, service

import aioipc
import aioipc.process
from aioipc.process import _channel_stream
from aioipc.testing import check_message_stream, wait_until_idle


@asynccontextmanager
async def channel_pair() -> AsyncIterator[tuple[aioipc.MessageStream, aioipc.MessageStream]]:
    """Both ends built as spawn() and parent_channel() build them, over one socketpair."""
    a, b = socket.socketpair()
    async with _channel_stream(a.detach(), 2**20) as parent, _channel_stream(b.detach(), 2**20) as child:
        yield parent, child


async def test_channel_message_conformance() -> None:
    await check_message_stream(channel_pair, two_way=True)


def write_script(tmp_path: Path, source: str) -> str:
    script = tmp_path / f"child_{os.urandom(4).hex()}.py"
    script.write_text(textwrap.dedent(source))
    return str(script)


ECHO_CHILD = """
    import sys
    import aioipc, aioipc.process

    async def main():
        async with await aioipc.process.parent_channel() as channel:
            async for message in channel:
                await channel.send(message.upper())
            await channel.send(b"bye")

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_child_echoes_over_its_channel_and_sees_eof(tmp_path: Path) -> None:
    script = write_script(tmp_path, ECHO_CHILD)
    async with await aioipc.process.spawn([sys.executable, script, loop_name()]) as proc:
        channel = proc.channel
        assert channel is not None
        with anyio.fail_after(20):
            for i in range(200):
                await channel.send(b"msg %d" % i)
            await channel.send(b"x" * 3_000_000)
            await channel.send(b"")
            for i in range(200):
                assert await channel.receive() == b"MSG %d" % i
            assert await channel.receive() == b"X" * 3_000_000
            assert await channel.receive() == b""
            await channel.send_eof()
            assert await channel.receive() == b"bye"
            with pytest.raises(anyio.EndOfStream):
                await channel.receive()
            assert await proc.wait() == 0
        assert proc.returncode == 0
        assert "returncode=0" in repr(proc)


async def test_pipes_and_passed_fds_reach_the_child() -> None:
    extra_r, extra_w = aioipc.pipe()
    proc = await aioipc.process.spawn(
        ["sh", "-c", 'tr a-z A-Z; echo side > /dev/fd/"$1"', "sh", str(extra_w.fileno())],
        channel=False,
        stdin=aioipc.process.PIPE,
        stdout=aioipc.process.PIPE,
        pass_fds=[extra_w],
    )
    await extra_w.aclose()
    async with proc, extra_r:
        assert proc.channel is None
        assert proc.stdin is not None
        assert proc.stdout is not None
        with anyio.fail_after(20):
            await proc.stdin.send(b"hello child\n")
            await proc.stdin.aclose()
            assert await Service(proc).rest() == ["HELLO CHILD"]
            assert await extra_r.receive() == b"side\n"
            assert await proc.wait() == 0


async def test_parent_channel_without_a_parent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(aioipc.process.CHANNEL_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"not started by aioipc\.spawn"):
        await aioipc.process.parent_channel()


@pytest.mark.parametrize("value", ["nonsense", "999999"])
async def test_parent_channel_with_a_bad_fd_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(aioipc.process.CHANNEL_ENV, value)
    with pytest.raises(ValueError, match="does not name an open fd"):
        await aioipc.process.parent_channel()
    assert aioipc.process.CHANNEL_ENV not in os.environ


async def test_parent_channel_on_a_pipe_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = aioipc.pipe()
    async with r, w:
        monkeypatch.setenv(aioipc.process.CHANNEL_ENV, str(r.fileno()))
        with pytest.raises(ValueError, match="not a socket"):
            await aioipc.process.parent_channel()


async def test_a_child_without_a_channel_does_not_inherit_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(aioipc.process.CHANNEL_ENV, "5")
    argv = ["sh", "-c", f"echo ${{{aioipc.process.CHANNEL_ENV}-unset}}"]
    async with await aioipc.process.spawn(argv, channel=False, stdout=aioipc.process.PIPE) as proc:
        with anyio.fail_after(10):
            assert await Service(proc).rest() == ["unset"]


async def test_spawning_a_missing_program_leaks_no_fd() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        await aioipc.process.spawn(["/nonexistent/program"], stdout=aioipc.process.PIPE)
    assert set(os.listdir("/proc/self/fd")) == before


async def test_wait_gives_the_negative_signal_and_serves_many_waiters() -> None:
    async with await aioipc.process.spawn(["sleep", "60"], channel=False) as proc:
        with anyio.fail_after(10):
            waiters = [asyncio.ensure_future(proc.wait()) for _ in range(3)]
            await wait_until_idle()
            waiters[0].cancel()
            proc.send_signal(signal.SIGUSR1)
            assert await asyncio.gather(*waiters[1:]) == [-signal.SIGUSR1] * 2
            assert waiters[0].cancelled()
            assert await proc.wait() == -signal.SIGUSR1
            proc.send_signal(signal.SIGTERM)  # reaped: nothing to signal, no error


IGNORES_SIGTERM = """
    import signal, sys
    import aioipc, aioipc.process

    async def main():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        async with await aioipc.process.parent_channel() as channel:
            await channel.send(b"ignoring SIGTERM")
            await channel.receive()

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    script = write_script(tmp_path, IGNORES_SIGTERM)
    async with await aioipc.process.spawn([sys.executable, script, loop_name()]) as proc:
        assert proc.channel is not None
        with anyio.fail_after(20):
            assert await proc.channel.receive() == b"ignoring SIGTERM"
            assert await proc.terminate(grace=0.5) == -signal.SIGKILL
            assert await proc.terminate(grace=0.5) == -signal.SIGKILL


async def test_closing_a_process_terminates_it_and_a_cancelled_close_still_reaps_it() -> None:
    proc = await aioipc.process.spawn(["sleep", "60"], channel=False)
    await proc.aclose()
    assert proc.returncode == -signal.SIGTERM
    await proc.aclose()

    stubborn = await aioipc.process.spawn(
        ["sh", "-c", "trap '' TERM; echo ready; exec sleep 60"], stdout=aioipc.process.PIPE
    )
    await Service(stubborn).expect("ready")
    closing = asyncio.ensure_future(stubborn.aclose(grace=60))
    await wait_until_idle()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert stubborn.returncode == -signal.SIGKILL


async def test_wait_pid_for_processes_we_did_not_start() -> None:
    """A grandchild (not ours: no status) and a child started by subprocess (status, left to reap)."""
    proc = await aioipc.process.spawn(
        ["sh", "-c", "sleep 60 & echo $!; wait"], channel=False, stdout=aioipc.process.PIPE
    )
    async with proc:
        grandchild = int(await Service(proc).line())
        with anyio.fail_after(10):
            waiting = asyncio.ensure_future(aioipc.process.wait_pid(grandchild))
            await wait_until_idle()
            assert not waiting.done()
            os.kill(grandchild, signal.SIGTERM)
            assert await waiting is None
            assert await proc.wait() == 0

    child = subprocess.Popen(["sh", "-c", "exit 7"])  # noqa: ASYNC220
    with anyio.fail_after(10):
        assert await aioipc.process.wait_pid(child.pid) == 7
    assert child.wait() == 7  # exited, and still there for its owner to reap

    with pytest.raises(ProcessLookupError):
        await aioipc.process.wait_pid(2**22 + 1)
    with pytest.raises(ValueError, match="positive"):
        await aioipc.process.wait_pid(0)


WORKER = """
    import sys
    import anyio, aioipc, aioipc.process
    from aioipc.shutdown import graceful_shutdown

    async def main():
        channel = await aioipc.process.parent_channel()
        async with channel, graceful_shutdown(timeout=30) as sd:
            async def say_goodbye():
                # Finishes only once the master has told every worker to stop:
                # a master that stopped its workers one by one would deadlock here.
                await channel.send(b"stopping")
                assert await channel.receive() == b"go"

            sd.add_hook(say_goodbye)
            await channel.send(b"ready")
            try:
                await channel.receive()  # nothing comes; EndOfStream if the master dies
            except anyio.EndOfStream:
                pass

    aioipc.run(main(), loop=sys.argv[1])
"""

MASTER = """
    import asyncio, os, sys
    import aioipc, aioipc.process
    from aioipc.shutdown import graceful_shutdown

    async def main():
        loop_name, worker_script = sys.argv[1], sys.argv[2]
        workers = [
            await aioipc.process.spawn([sys.executable, worker_script, loop_name]) for _ in range(4)
        ]
        for worker in workers:
            assert await worker.channel.receive() == b"ready"

        async def stop_workers():
            stopping = asyncio.ensure_future(aioipc.process.terminate_all(workers, grace=20))
            for worker in workers:
                assert await worker.channel.receive() == b"stopping"
            for worker in workers:
                await worker.channel.send(b"go")
            print("statuses", *await stopping, flush=True)
            for worker in workers:
                await worker.aclose()
                try:
                    os.waitpid(worker.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                else:
                    print("zombie", worker.pid, flush=True)

        async with graceful_shutdown(timeout=30) as sd:
            sd.add_hook(stop_workers)
            print("workers", *(w.pid for w in workers), flush=True)
            await asyncio.Event().wait()

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_master_stops_four_workers_in_parallel_and_leaves_no_zombie(tmp_path: Path) -> None:
    worker = write_script(tmp_path, WORKER)
    async with service(tmp_path, MASTER, worker) as master:
        with anyio.fail_after(40):
            label, *pids = (await master.line()).split()
            assert label == "workers"
            assert len(pids) == 4
            os.kill(master.pid, signal.SIGTERM)
            assert await master.rest() == ["statuses 0 0 0 0"]
            assert await master.proc.wait() == 0
    for pid in map(int, pids):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
