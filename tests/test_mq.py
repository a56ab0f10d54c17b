"""POSIX message queues: conformance, priorities, limits, ownership, C interop, listing."""

from __future__ import annotations

import array
import ast
import asyncio
import errno
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import posix_ipc
import pytest
from helpers import check_ops_are_coroutines, compile_c, run_tool

import aioipc
import aioipc.mq
from aioipc._core.queues import mq_handle, mq_receive, mq_send
from aioipc.mq import QueueAttribute
from aioipc.testing import check_message_stream

C_PROGRAM = r"""
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* mqc send NAME PRIORITY MESSAGE...  |  mqc recv NAME COUNT */
int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "send") == 0) {
        mqd_t q = mq_open(argv[2], O_WRONLY);
        if (q == (mqd_t)-1) { perror("mq_open"); return 1; }
        for (int i = 4; i < argc; i++)
            if (mq_send(q, argv[i], strlen(argv[i]), (unsigned)atoi(argv[3])) != 0) {
                perror("mq_send");
                return 1;
            }
        return mq_close(q) != 0;
    }
    if (argc == 4 && strcmp(argv[1], "recv") == 0) {
        mqd_t q = mq_open(argv[2], O_RDONLY);
        if (q == (mqd_t)-1) { perror("mq_open"); return 1; }
        struct mq_attr attr;
        mq_getattr(q, &attr);
        char *buf = malloc(attr.mq_msgsize + 1);
        for (int i = 0; i < atoi(argv[3]); i++) {
            unsigned prio;
            ssize_t n = mq_receive(q, buf, attr.mq_msgsize, &prio);
            if (n < 0) { perror("mq_receive"); return 1; }
            printf("%u:%.*s\n", prio, (int)n, buf);
        }
        fflush(stdout);
        return mq_close(q) != 0;
    }
    return 2;
}
"""


@pytest.fixture(scope="module")
def mqc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(tmp_path_factory.mktemp("mqc"), "mqc", C_PROGRAM, "-lrt")


@pytest.fixture
def qname(unique_name: str) -> Iterator[str]:
    name = "/" + unique_name
    yield name
    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.ExistentialError:
        pass
    else:
        pytest.fail(f"the test left the queue {name} behind")


def test_queue_attribute_names() -> None:
    assert set(aioipc.mq.__all__) >= {"open", "unlink", "list_queues", "MessageQueue"}


async def test_conformance(qname: str) -> None:
    @asynccontextmanager
    async def pair() -> AsyncIterator[tuple[aioipc.mq.MessageQueue, aioipc.mq.MessageQueue]]:
        async with (
            await aioipc.mq.open(qname, create=True) as receiver,
            await aioipc.mq.open(qname, write=True, read=False) as sender,
        ):
            yield sender, receiver

    await check_message_stream(pair, eof=False, peer_close=False, large_size=8192, clog_bytes=100_000)


async def test_priorities_and_attributes(qname: str) -> None:
    async with await aioipc.mq.open(qname, create=True, max_messages=4, max_message_size=64) as q:
        assert q.extra(QueueAttribute.max_messages) == 4
        assert q.extra(QueueAttribute.max_message_size) == 64
        assert q.extra(aioipc.IPCAttribute.path) == qname
        assert q.extra(aioipc.IPCAttribute.fd) == q.fileno() >= 0
        for data, priority in [(b"low", 0), (b"high", 9), (b"mid", 3), (b"high2", 9)]:
            await q.send(data, priority=priority)
        assert q.extra(QueueAttribute.current_messages) == 4
        got = [await q.receive_with_priority() for _ in range(4)]
        assert got == [(b"high", 9), (b"high2", 9), (b"mid", 3), (b"low", 0)]
        with pytest.raises(ValueError, match="priority"):
            await q.send(b"x", priority=-1)


async def test_async_iteration_ends_when_closed(qname: str) -> None:
    async with await aioipc.mq.open(qname, create=True) as q:
        for i in range(3):
            await q.send(b"%d" % i)
        got = []
        with pytest.raises(anyio.ClosedResourceError):
            async for message in q:
                got.append(message)
                if len(got) == 3:
                    await q.aclose()
        assert got == [b"0", b"1", b"2"]


async def test_oversize_message_is_refused_before_sending(qname: str) -> None:
    async with await aioipc.mq.open(qname, create=True, max_message_size=100) as q:
        with pytest.raises(aioipc.FrameTooLarge, match="101 bytes"):
            await q.send(b"x" * 101)
        assert q.extra(QueueAttribute.current_messages) == 0
        with pytest.raises(TypeError):
            await q.send("text")  # type: ignore[arg-type]


async def test_a_refused_send_sends_nothing_and_bytes_like_data_is_sent_as_bytes(qname: str) -> None:
    async with await aioipc.mq.open(qname, create=True, max_message_size=8) as q:
        for bad, error in [(12, TypeError), ("text", TypeError), (b"x" * 9, aioipc.FrameTooLarge)]:
            with pytest.raises(error):
                await q.send(bad)  # type: ignore[arg-type]
        for priority in (-1, aioipc.mq.PRIORITY_MAX + 1):
            with pytest.raises(ValueError, match="priority"):
                await q.send(b"x", priority=priority)
        assert q.extra(QueueAttribute.current_messages) == 0
        await q.send(bytearray(b"array"), priority=2)
        await q.send(memoryview(array.array("i", [1, 2])), priority=1)  # 8 bytes, 2 items
        assert await q.receive_with_priority() == (b"array", 2)
        assert await q.receive() == array.array("i", [1, 2]).tobytes()


def test_a_receive_buffer_over_eight_kib(qname: str) -> None:
    # The receive buffer is the size the caller gives: on the stack up to 8 KiB, else allocated
    # (a queue with larger messages needs CAP_SYS_RESOURCE, so a larger buffer stands in for it).
    queue = posix_ipc.MessageQueue(qname, posix_ipc.O_CREX, 0o600, 2, 64)
    try:
        os.set_blocking(queue.mqd, False)
        mq = mq_handle(queue)
        assert mq_receive(mq, 20_000, False) is None
        assert mq_send(mq, b"a" * 64, 3) is True
        assert mq_send(mq, b"b", 0) is True
        assert mq_send(mq, b"c", 0) is False  # full
        assert mq_receive(mq, 20_000, True) == (b"a" * 64, 3)
        assert mq_receive(mq, 20_000, False) == b"b"
        assert mq_receive(mq, 20_000, True) is None
    finally:
        queue.close()
        queue.unlink()


@pytest.mark.parametrize("name", ["noslash", "/a/b", "/", "/" + "x" * 256, "/nul\0"])
async def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="bad queue name"):
        await aioipc.mq.open(name, create=True)


async def test_exclusive_create_mode_and_ownership(qname: str) -> None:
    async with await aioipc.mq.open(qname, create=True) as owner:
        assert owner.owned
        assert os.fstat(owner.fileno()).st_mode & 0o777 == 0o600
        with pytest.raises(FileExistsError):
            await aioipc.mq.open(qname, create=True)
        async with await aioipc.mq.open(qname, create=True, exist_ok=True) as other:
            assert not other.owned
        # the opener's close left the queue in place
        async with await aioipc.mq.open(qname) as again:
            await again.send(b"still here")
        assert await owner.receive() == b"still here"
    with pytest.raises(FileNotFoundError):
        await aioipc.mq.open(qname)


async def test_mode_is_exact_whatever_the_umask(qname: str) -> None:
    old = os.umask(0o077)
    try:
        async with await aioipc.mq.open(qname, create=True, mode=0o640) as q:
            assert os.fstat(q.fileno()).st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


async def test_persist_and_unlink(qname: str) -> None:
    async with await aioipc.mq.open(qname, create=True, persist=True) as q:
        await q.send(b"kept")
    async with await aioipc.mq.open(qname) as q:
        assert await q.receive() == b"kept"
    aioipc.mq.unlink(qname)
    with pytest.raises(FileNotFoundError):
        aioipc.mq.unlink(qname)


async def test_one_direction_handles(qname: str) -> None:
    async with (
        await aioipc.mq.open(qname, create=True, read=True, write=False) as reader,
        await aioipc.mq.open(qname, read=False, write=True) as writer,
    ):
        with pytest.raises(PermissionError):
            await reader.send(b"x")
        with pytest.raises(PermissionError):
            await writer.receive()
        await writer.send(b"one way")
        assert await reader.receive() == b"one way"


async def test_kernel_limit_on_message_size_is_named(qname: str) -> None:
    with pytest.raises(OSError, match=r"msgsize_max.*sysctl fs\.mqueue\.msgsize_max") as info:
        await aioipc.mq.open(qname, create=True, max_message_size=64 * 2**20)
    assert info.value.errno == errno.EINVAL


async def test_per_user_byte_limit_is_named(qname: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (1000, hard))
    try:
        with pytest.raises(OSError, match=r"RLIMIT_MSGQUEUE=1000.*ulimit -q") as info:
            await aioipc.mq.open(qname, create=True, max_messages=10, max_message_size=8192)
    finally:
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (soft, hard))
    assert info.value.errno == errno.EMFILE


async def test_no_thread_is_used(qname: str) -> None:
    before = threading.active_count()
    async with await aioipc.mq.open(qname, create=True) as q:
        task = asyncio.ensure_future(q.receive())
        await asyncio.sleep(0)
        assert threading.active_count() == before
        await q.send(b"x")
        with anyio.fail_after(5):
            assert await task == b"x"


async def test_c_program_sends_with_priorities(qname: str, mqc: Path) -> None:
    async with await aioipc.mq.open(qname, create=True) as q:
        with anyio.fail_after(20):
            await run_tool(mqc, "send", qname, "1", "a", "b")
            await run_tool(mqc, "send", qname, "7", "urgent")
            got = [await q.receive_with_priority() for _ in range(3)]
    assert got == [(b"urgent", 7), (b"a", 1), (b"b", 1)]


async def test_c_program_receives_with_priorities(qname: str, mqc: Path) -> None:
    async with await aioipc.mq.open(qname, create=True) as q:
        with anyio.fail_after(20):
            await q.send(b"normal", priority=2)
            await q.send(b"top", priority=30)
            await q.send(b"normal2", priority=2)
            receiver = asyncio.ensure_future(run_tool(mqc, "recv", qname, "4"))
            await q.send(b"late")  # queued behind the others, or waited for by the C program
            out = await receiver
    assert out.splitlines() == ["30:top", "2:normal", "2:normal2", "0:late"]


PRODUCER = textwrap.dedent(
    """
    import sys, aioipc, aioipc.mq

    async def main():
        async with await aioipc.mq.open(sys.argv[1]) as q:
            for i in range(int(sys.argv[2])):
                await q.send(b"%d" % i)

    aioipc.run(main())
    """
)


async def test_other_process_fills_the_queue_and_waits(qname: str, tmp_path: Path) -> None:
    """Backpressure across processes: a 2-slot queue carries 500 messages in order."""
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    async with await aioipc.mq.open(qname, create=True, max_messages=2, max_message_size=16) as q:
        with anyio.fail_after(30):
            proc = await asyncio.create_subprocess_exec(sys.executable, str(script), qname, "500")
            got = [await q.receive() for _ in range(500)]
            assert await proc.wait() == 0
    assert got == [b"%d" % i for i in range(500)]


async def test_address_scheme(qname: str) -> None:
    received: list[bytes] = []
    done = asyncio.Event()

    async def handler(queue: aioipc.mq.MessageQueue) -> None:
        async for message in queue:
            received.append(message)
            if message == b"exit":
                done.set()

    async with await aioipc.serve(f"mq:{qname}", handler) as server:
        assert server.address == f"mq:{qname}"
        async with await aioipc.connect(f"mq:{qname}") as q:
            await q.send(b"hi")
            await q.send(b"exit")
        with anyio.fail_after(5):
            await done.wait()
    assert received == [b"hi", b"exit"]


def test_list_queues_says_how_to_mount(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mount -t mqueue none"):
        aioipc.mq.list_queues(str(tmp_path))


LISTER = textwrap.dedent(
    """
    import os, sys, aioipc.mq
    os.makedirs(sys.argv[1], exist_ok=True)
    if os.system(f"mount -t mqueue none {sys.argv[1]}") != 0:
        sys.exit(77)
    for info in aioipc.mq.list_queues(sys.argv[1]):
        print(repr(tuple(info)))
    """
)


async def test_list_queues_in_a_private_mount(qname: str, tmp_path: Path) -> None:
    """Mount the mqueue filesystem in a private mount namespace and list our queue there."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    script = tmp_path / "lister.py"
    script.write_text(LISTER)
    async with await aioipc.mq.open(qname, create=True, max_messages=3, max_message_size=100) as q:
        await q.send(b"12345")
        proc = await asyncio.create_subprocess_exec(
            "unshare", "-m", sys.executable, str(script), str(tmp_path / "mnt"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        with anyio.fail_after(20):
            out, err = await proc.communicate()
        if proc.returncode == 77 or b"unshare failed" in err:
            pytest.skip("cannot mount an mqueue filesystem here")
        assert proc.returncode == 0, err.decode()
        rows = [ast.literal_eval(line) for line in out.decode().splitlines()]
        assert (qname, os.getuid(), 0o600, 5, 1, 3, 100) in rows


async def test_cancelled_receives_lose_nothing(qname: str, mqc: Path) -> None:
    """Cancel receives thousands of times while a C producer sends numbered messages."""
    count = 4000
    async with await aioipc.mq.open(qname, create=True, max_messages=4, max_message_size=16) as q:
        producer = await asyncio.create_subprocess_exec(mqc, "send", qname, "0", *map(str, range(count)))
        got: list[int] = []
        cancelled = attempt = 0
        with anyio.fail_after(60):
            while len(got) < count:
                attempt += 1
                task = asyncio.ensure_future(q.receive())
                for _ in range(attempt % 4):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    got.append(int(await task))
                except asyncio.CancelledError:
                    cancelled += 1
            assert await producer.wait() == 0
    assert got == list(range(count)), "a number was lost, repeated or reordered"
    assert cancelled > 1000


async def test_send_and_receive_are_coroutines_to_awaits_and_tasks(qname: str, mqc: Path) -> None:
    """Compiled, they are coroutines without a frame: nothing happens before the first step."""
    async with await aioipc.mq.open(qname, create=True, max_messages=2, max_message_size=16) as q:
        with anyio.fail_after(20):
            await check_ops_are_coroutines(
                lambda data: q.send(data, priority=3),
                q.receive,
                lambda: q.extra(QueueAttribute.current_messages) == 1,
            )
            # parked, then thrown into or closed: the exception comes out, the handle is free again
            for end in ("throw", "close"):
                waiting = q.receive_with_priority()
                assert isinstance(waiting.send(None), asyncio.Future)  # parked on the descriptor
                if end == "throw":
                    with pytest.raises(KeyError):
                        waiting.throw(KeyError("thrown"))
                else:
                    waiting.close()
            receiving = asyncio.create_task(q.receive_with_priority())
            await run_tool(mqc, "send", qname, "5", "late")
            assert await receiving == (b"late", 5), "a parked receive that ended took the message"

            # a send parked on a full queue, then cancelled, sent nothing
            await q.send(b"1")
            await q.send(b"2")
            async with anyio.create_task_group() as tg:
                tg.start_soon(q.send, b"3")
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
            assert [await q.receive() for _ in range(2)] == [b"1", b"2"]
            assert q.extra(QueueAttribute.current_messages) == 0, "a cancelled send() sent its message"
