"""spool:DIR, a durable queue in a directory, between processes, shell writers and killed consumers."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from helpers import Service, run_tool, service, until

import aioipc
import aioipc.spool
from aioipc.spool import SpoolReader


class Collector:
    """A spool handler that keeps what it receives; ``await wait_for(n)`` until it has ``n``."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._changed = anyio.Event()

    async def __call__(self, msgs: SpoolReader) -> None:
        async for message in msgs:
            self.received.append(message)
            self._changed.set()

    async def wait_for(self, count: int, timeout: float = 30) -> list[bytes]:
        with anyio.fail_after(timeout):
            while len(self.received) < count:
                self._changed = anyio.Event()
                await self._changed.wait()
        return self.received


async def test_send_then_serve_and_the_layout_on_disk(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    await aioipc.spool.create(spool)
    async with await aioipc.connect(f"spool:{spool}") as msgs:
        await msgs.send(b"first")
        await msgs.send(b"")
        await msgs.send(b"third")
    assert aioipc.spool.info(spool) == (3, 0, 0)
    for sub in ("", "tmp", "new", "cur", "bad"):
        assert stat.S_IMODE((spool / sub).stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (spool / "new").iterdir()} == {0o600}
    jobs = Collector()
    async with await aioipc.serve(f"spool:{spool}", jobs) as server:
        assert server.address == f"spool:{spool}"
        await jobs.wait_for(3)
        await run_tool("sh", "-ec", f"printf job > {spool}/tmp/x && mv {spool}/tmp/x {spool}/new/")
        await jobs.wait_for(4)
        assert os.listdir(spool / "new") == []
    assert jobs.received == [b"first", b"", b"third", b"job"]
    assert aioipc.spool.info(spool) == (0, 0, 0)
    assert sorted(os.listdir(spool)) == ["bad", "cur", "new", "tmp"]
    assert os.listdir(spool / "cur") == os.listdir(spool / "tmp") == []


async def test_each_side_refuses_the_other_direction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no spool"):
        await aioipc.connect(f"spool:{tmp_path / 'none'}")
    await aioipc.spool.create(tmp_path)
    async with await aioipc.connect(f"spool:{tmp_path}", max_size=4) as msgs:
        with pytest.raises(TypeError, match=r"receive with aioipc\.serve"):
            await msgs.receive()
        with pytest.raises(aioipc.FrameTooLarge):
            await msgs.send(b"12345")
    with pytest.raises(anyio.ClosedResourceError):
        await msgs.send(b"x")
    errors: list[BaseException] = []

    async def handler(stream: SpoolReader) -> None:
        try:
            await stream.send(b"x")
        except TypeError as exc:
            errors.append(exc)

    async with await aioipc.serve(f"spool:{tmp_path}", handler) as server:
        await until(lambda: server.connections == 0)
    assert "send with aioipc.connect" in str(errors[0])
    assert aioipc.spool.info(tmp_path) == (0, 0, 0)


async def test_an_idle_consumer_costs_no_cpu_and_no_thread(tmp_path: Path) -> None:
    threads = threading.active_count()
    jobs = Collector()
    async with await aioipc.serve(f"spool:{tmp_path}", jobs):
        cpu = time.process_time()
        await anyio.sleep(0.5)
        used = time.process_time() - cpu
        assert threading.active_count() == threads
    assert used < 0.05, f"an idle consumer used {used:.3f} s of CPU in 0.5 s"


async def test_a_cancelled_receive_loses_no_message(tmp_path: Path) -> None:
    await aioipc.spool.create(tmp_path)
    received: list[bytes] = []
    cancelled = anyio.Event()

    async def handler(stream: SpoolReader) -> None:
        with anyio.move_on_after(0.05):
            await stream.receive()  # nothing there yet: cancelled while waiting
        cancelled.set()
        received.append(await stream.receive())

    async with await aioipc.serve(f"spool:{tmp_path}", handler) as server:
        with anyio.fail_after(10):
            await cancelled.wait()
        async with await aioipc.connect(f"spool:{tmp_path}", sync=False) as msgs:
            await msgs.send(b"kept")
        await until(lambda: server.connections == 0)
    assert received == [b"kept"]
    assert aioipc.spool.info(tmp_path) == (0, 0, 0)


async def test_connect_with_a_timeout_waits_for_the_spool_to_exist(tmp_path: Path) -> None:
    spool = tmp_path / "later"
    connected: list[aioipc.MessageStream] = []

    async def connect() -> None:
        connected.append(await aioipc.connect(f"spool:{spool}", timeout=10))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(connect)
        await anyio.lowlevel.checkpoint()  # the first try found nothing
        await aioipc.spool.create(spool)
    async with connected[0] as msgs:
        await msgs.send(b"x")
    assert aioipc.spool.info(spool) == (1, 0, 0)


async def test_a_handler_that_raises_puts_its_message_back(tmp_path: Path) -> None:
    await aioipc.spool.create(tmp_path)
    async with await aioipc.connect(f"spool:{tmp_path}", sync=False) as msgs:
        await msgs.send(b"poison")

    async def handler(stream: SpoolReader) -> None:
        await stream.receive()
        raise RuntimeError("cannot handle it")

    async with await aioipc.serve(f"spool:{tmp_path}", handler) as server:
        await until(lambda: server.connections == 0)
    assert aioipc.spool.info(tmp_path) == (1, 0, 0)
    jobs = Collector()
    async with await aioipc.serve(f"spool:{tmp_path}", jobs):
        assert await jobs.wait_for(1) == [b"poison"]


async def test_a_bad_file_is_moved_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    await aioipc.spool.create(tmp_path)
    await run_tool(
        "sh",
        "-ec",
        f"cd {tmp_path}; mkdir new/1-dir; printf toolong > tmp/2-big; mv tmp/2-big new/; "
        "ln -s /etc/passwd new/3-link; printf ok > tmp/4-ok; mv tmp/4-ok new/",
    )
    jobs = Collector()
    async with await aioipc.serve(f"spool:{tmp_path}", jobs, max_size=4):
        assert await jobs.wait_for(1) == [b"ok"]
    assert sorted(os.listdir(tmp_path / "bad")) == ["1-dir", "2-big", "3-link"]


WRITER = """
import sys, aioipc
async def main(path, n, count, sync):
    async with await aioipc.connect("spool:" + path, sync=sync) as msgs:
        for i in range(count):
            await msgs.send(f"w{n}-{i}".encode())
aioipc.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "sync"))
"""


async def test_four_writer_processes_and_a_shell_writer_every_message_once(tmp_path: Path) -> None:
    spool, count = tmp_path / "spool", 20
    jobs = Collector()
    async with await aioipc.serve(f"spool:{spool}", jobs):
        writers = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", WRITER, str(spool), str(n), str(count), "sync" if n < 2 else "nosync"
            )
            for n in range(4)
        ]
        feed = f"cd {spool}; for i in $(seq {count}); do printf sh-$i > tmp/sh-$i; mv tmp/sh-$i new/; done"
        await run_tool("sh", "-ec", feed)
        with anyio.fail_after(30):
            assert [await w.wait() for w in writers] == [0, 0, 0, 0]
        received = await jobs.wait_for(5 * count)
        assert os.listdir(spool / "new") == []
    expected = {f"w{n}-{i}".encode() for n in range(4) for i in range(count)}
    expected |= {f"sh-{i}".encode() for i in range(1, count + 1)}
    assert len(received) == len(expected) == len(set(received))
    assert set(received) == expected
    for n in range(4):  # one writer's messages arrive in the order it sent them
        mine = [m for m in received if m.startswith(f"w{n}-".encode())]
        assert mine == [f"w{n}-{i}".encode() for i in range(count)]


CONSUMER = """
import sys, anyio, aioipc
async def handler(msgs):
    async for message in msgs:
        print(message.decode(), flush=True)
        if sys.argv[3] == "hang":
            await anyio.sleep_forever()
async def main():
    async with aioipc.graceful_shutdown():
        async with await aioipc.serve("spool:" + sys.argv[2], handler) as server:
            print("ready", flush=True)
            await server.serve_forever()
aioipc.run(main(), loop=sys.argv[1])
"""


async def test_a_consumer_killed_in_its_handler_is_redelivered_on_restart(tmp_path: Path) -> None:
    await aioipc.spool.create(tmp_path)
    async with await aioipc.connect(f"spool:{tmp_path}") as msgs:
        for job in (b"job1", b"job2", b"job3"):
            await msgs.send(job)
    async with service(tmp_path, CONSUMER, str(tmp_path), "hang") as consumer:
        with anyio.fail_after(10):
            await consumer.expect("ready", "job1")
        consumer.proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            assert await consumer.proc.wait() == -signal.SIGKILL
    assert aioipc.spool.info(tmp_path) == (2, 1, 1)  # job1 is still claimed by the dead consumer
    jobs = Collector()
    async with await aioipc.serve(f"spool:{tmp_path}", jobs):
        assert await jobs.wait_for(3) == [b"job1", b"job2", b"job3"]
        assert aioipc.spool.info(tmp_path) == (0, 0, 1)  # ours; the dead one's directory is gone
    assert aioipc.spool.info(tmp_path) == (0, 0, 0)


async def test_two_consumer_processes_never_deliver_a_message_twice(tmp_path: Path) -> None:
    await aioipc.spool.create(tmp_path)
    count = 100
    async with (
        service(tmp_path, CONSUMER, str(tmp_path), "go") as one,
        service(tmp_path, CONSUMER, str(tmp_path), "go") as two,
    ):
        with anyio.fail_after(10):
            await one.expect("ready")
            await two.expect("ready")
        async with await aioipc.connect(f"spool:{tmp_path}", sync=False) as msgs:
            for i in range(count):
                await msgs.send(b"%d" % i)
        lines: list[str] = []
        enough = anyio.Event()

        async def read(consumer: Service) -> None:
            while True:
                lines.append(await consumer.line())
                if len(lines) == count:
                    enough.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read, one)
            tg.start_soon(read, two)
            with anyio.fail_after(30):
                await enough.wait()
            tg.cancel_scope.cancel()
        assert await one.proc.terminate() == await two.proc.terminate() == 0
        lines += await one.rest() + await two.rest()  # a duplicate printed late would be here
    assert sorted(lines, key=int) == [str(i) for i in range(count)]
    assert aioipc.spool.info(tmp_path) == (0, 0, 0)


async def test_aioipc_ls_shows_a_spools_depth(tmp_path: Path) -> None:
    await aioipc.spool.create(tmp_path)
    async with await aioipc.connect(f"spool:{tmp_path}", sync=False) as msgs:
        await msgs.send(b"one")
        await msgs.send(b"two")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioipc",
        "ls",
        f"spool:{tmp_path}",
        str(tmp_path / "none"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    with anyio.fail_after(30):
        out, err = await proc.communicate()
    assert proc.returncode == 1  # the second one is not a spool
    row = out.decode().splitlines()[1].split()
    assert row[:3] == ["spool", pwd.getpwuid(os.getuid()).pw_name, "0700"]
    assert row[3:] == [f"spool:{tmp_path}", "2", "waiting,", "0", "claimed", "by", "0", "consumers"]
    assert f"spool:{tmp_path / 'none'}" in err.decode()
