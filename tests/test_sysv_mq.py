"""System V message queues: conformance, type selection, cancellation, removal, C interop."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import sysv_ipc
from helpers import Service, check_ops_are_coroutines, compile_c, run_tool, service, until

import aioipc
import aioipc.sysv
from aioipc._core.queues import msg_handle, msg_receive, msg_send
from aioipc.sysv import MessageQueue, SysVQueueAttribute
from aioipc.testing import check_message_stream

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <unistd.h>

struct msg { long mtype; char mtext[8192]; };

/* sysvc key PATH PROJ | send PATH PROJ TYPE TEXT... | seq PATH PROJ N PAUSE_US | recv PATH PROJ TYPE COUNT */
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    key_t key = ftok(argv[2], atoi(argv[3]));
    if (key == -1) { perror("ftok"); return 1; }
    if (strcmp(argv[1], "key") == 0) { printf("%d\n", (int)key); return 0; }
    int id = msgget(key, 0);
    if (id == -1) { perror("msgget"); return 1; }
    struct msg m;
    if (strcmp(argv[1], "send") == 0) {
        m.mtype = atol(argv[4]);
        for (int i = 5; i < argc; i++) {
            size_t n = strlen(argv[i]);
            memcpy(m.mtext, argv[i], n);
            if (msgsnd(id, &m, n, 0) != 0) { perror("msgsnd"); return 1; }
        }
        return 0;
    }
    if (strcmp(argv[1], "seq") == 0) {
        m.mtype = 1;
        for (int i = 0; i < atoi(argv[4]); i++) {
            int n = sprintf(m.mtext, "%d", i);
            if (msgsnd(id, &m, n, 0) != 0) { perror("msgsnd"); return 1; }
            usleep(atoi(argv[5]));
        }
        return 0;
    }
    if (strcmp(argv[1], "recv") == 0) {
        for (int i = 0; i < atoi(argv[5]); i++) {
            ssize_t n = msgrcv(id, &m, sizeof m.mtext, atol(argv[4]), 0);
            if (n < 0) { perror("msgrcv"); return 1; }
            printf("%ld:%.*s\n", m.mtype, (int)n, m.mtext);
        }
        return 0;
    }
    return 2;
}
"""


@pytest.fixture(scope="module")
def sysvc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(tmp_path_factory.mktemp("sysvc"), "sysvc", C_PROGRAM)


@pytest.fixture
def ftok_path(tmp_path: Path) -> Path:
    """A file whose ftok key no other test uses (a fresh inode)."""
    path = tmp_path / "ftok-anchor"
    path.write_bytes(b"")
    return path


@pytest.fixture
def key(ftok_path: Path) -> Iterator[int]:
    key = aioipc.sysv.ftok(ftok_path, 42)
    yield key
    try:
        sysv_ipc.MessageQueue(key).remove()
    except sysv_ipc.ExistentialError:
        pass
    else:
        pytest.fail(f"the test left the queue {key:#x} behind")


def bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("aioipc-msg")]


async def test_conformance(key: int) -> None:
    @asynccontextmanager
    async def pair() -> AsyncIterator[tuple[MessageQueue, MessageQueue]]:
        async with (
            await MessageQueue.open(key, create=True) as receiver,
            await MessageQueue.open(key) as sender,
        ):
            yield sender, receiver

    await check_message_stream(pair, eof=False, peer_close=False, large_size=8192, clog_bytes=100_000)


async def test_ftok_matches_c(ftok_path: Path, sysvc: Path) -> None:
    for proj in (1, 42, 255):
        assert int(await run_tool(sysvc, "key", ftok_path, str(proj))) == aioipc.sysv.ftok(ftok_path, proj)
    with pytest.raises(ValueError, match="proj"):
        aioipc.sysv.ftok(ftok_path, 0)
    with pytest.raises(FileNotFoundError):
        aioipc.sysv.ftok(ftok_path.with_name("missing"), 1)


async def test_type_selection(key: int) -> None:
    async with await MessageQueue.open(key, create=True) as q:
        for data, mtype in [(b"c", 3), (b"a1", 1), (b"b", 2), (b"e", 5), (b"a2", 1)]:
            await q.send(data, type=mtype)
        assert await q.receive_with_type(2) == (b"b", 2)
        assert await q.receive_with_type(-4) == (b"a1", 1)
        assert await q.receive_with_type(0) == (b"c", 3)
        assert await q.receive_with_type(-4) == (b"a2", 1)
        assert await q.receive(5) == b"e"
        assert q.extra(SysVQueueAttribute.current_messages) == 0


async def test_type_selection_on_messages_the_thread_took(key: int) -> None:
    """A receive that waited in the bridge thread may take several messages; selection still holds."""
    async with await MessageQueue.open(key, create=True) as q:
        raw = sysv_ipc.MessageQueue(key)
        first = asyncio.ensure_future(q.receive_with_type(0))
        await until(lambda: q._receiver.busy)
        for data, mtype in [(b"x", 4), (b"y", 3), (b"z", 2), (b"w", 3)]:
            raw.send(data, True, mtype)
        with anyio.fail_after(5):
            assert await first == (b"x", 4)
            assert await q.receive_with_type(3) == (b"y", 3)
            assert await q.receive_with_type(-3) == (b"z", 2)
            assert await q.receive_with_type(0) == (b"w", 3)


async def test_open_create_exclusive_and_mode(key: int) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        await MessageQueue.open(key)
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError) as missing:
        aioipc.sysv.remove_message_queue(key)
    assert missing.value.errno == errno.ENOENT
    async with await MessageQueue.open(key, create=True) as owner:
        assert owner.owned
        info = [i for i in aioipc.sysv.list_message_queues() if i.key == key]
        assert len(info) == 1
        assert info[0].mode == 0o600
        assert info[0].queue_id == owner.extra(SysVQueueAttribute.queue_id)
        with pytest.raises(FileExistsError) as exists:
            await MessageQueue.open(key, create=True)
        assert exists.value.errno == errno.EEXIST
        async with await MessageQueue.open(key, create=True, exist_ok=True) as other:
            assert not other.owned
            await other.send(b"hi")
        assert await owner.receive() == b"hi"


async def test_persist_and_remove_by_key(key: int) -> None:
    async with await MessageQueue.open(key, create=True, persist=True) as q:
        await q.send(b"kept", type=9)
    info = [i for i in aioipc.sysv.list_message_queues() if i.key == key]
    assert info[0].current_messages == 1
    assert info[0].current_bytes == 4
    assert info[0].max_bytes is not None
    aioipc.sysv.remove_message_queue(key)
    with pytest.raises(FileNotFoundError):
        aioipc.sysv.remove_message_queue(key)


async def test_oversize_and_bad_type(key: int) -> None:
    async with await MessageQueue.open(key, create=True) as q:
        too_big = q.max_message_size + 1
        with pytest.raises(aioipc.FrameTooLarge):
            await q.send(b"x" * too_big)
        with pytest.raises(ValueError, match="type"):
            await q.send(b"x", type=0)
        with pytest.raises(ValueError, match="type"):
            await q.send(b"x", type=2**31)  # a C long takes it, msgsnd would too
        for bad in (12, "text"):
            with pytest.raises(TypeError):
                await q.send(bad)  # type: ignore[arg-type]
        limit, q.max_message_size = q.max_message_size, 100  # ours, below the kernel's msgmax
        for item in (b"x" * 101, bytearray(101), memoryview(b"x" * 101)):
            with pytest.raises(aioipc.FrameTooLarge):
                await q.send(item)  # the fast path too holds to our limit
        q.max_message_size = limit
        assert q.extra(SysVQueueAttribute.current_messages) == 0
        await q.send(b"waiting", type=3)
        for type in (2**31, -(2**31)):  # from -(2**31 - 1) to 2**31 - 1
            with pytest.raises(ValueError, match="type"):
                await q.receive(type)
        await q.send(memoryview(bytearray(b"x" * q.max_message_size)), type=2)
        assert await q.receive_with_type(-3) == (b"x" * q.max_message_size, 2)
        assert await q.receive_with_type() == (b"waiting", 3)


def test_a_receive_buffer_over_eight_kib(key: int) -> None:
    # On the stack up to 8 KiB, else allocated; a send over msgmax is refused (EINVAL) either way.
    queue = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, 0o600, 20_000)  # sysv_ipc's buffer size
    try:
        msq = msg_handle(queue)
        assert msg_receive(msq, 20_000, False, 0) is None
        assert msg_send(msq, b"a" * 8000, 5) is True
        with pytest.raises((OSError, sysv_ipc.Error, ValueError)):
            msg_send(msq, b"b" * 20_000, 1)
        assert msg_receive(msq, 20_000, True, 0) == (b"a" * 8000, 5)
        assert msg_receive(msq, 20_000, True, 0) is None
    finally:
        queue.remove()


async def test_close_stops_the_threads_and_wakes_waiters(key: int) -> None:
    before = len(bridge_threads())
    q = await MessageQueue.open(key, create=True)
    receiver = asyncio.ensure_future(q.receive())
    await until(lambda: q._receiver.busy)
    assert len(bridge_threads()) == before + 1
    with anyio.fail_after(5):
        await q.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await receiver
    for thread in bridge_threads()[before:]:
        thread.join(5)
    assert len(bridge_threads()) == before


async def test_removal_while_receiving_is_an_error(key: int) -> None:
    async with await MessageQueue.open(key, create=True) as q:
        receiver = asyncio.ensure_future(q.receive())
        await until(lambda: q._receiver.busy)
        queue_id = q.extra(SysVQueueAttribute.queue_id)
        remover = f"import sysv_ipc; sysv_ipc.remove_message_queue({queue_id})"
        with anyio.fail_after(10):
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", remover)
            assert await proc.wait() == 0
            with pytest.raises(anyio.BrokenResourceError, match="removed"):
                await receiver
        with pytest.raises(anyio.BrokenResourceError):
            await q.send(b"x")


async def test_cancelled_receives_lose_nothing(key: int, ftok_path: Path, sysvc: Path) -> None:
    """Cancel receives thousands of times while a C producer sends numbered messages."""
    count = 3000
    async with await MessageQueue.open(key, create=True) as q:
        # The producer pauses between messages so that many receives wait in the bridge thread.
        producer = await asyncio.create_subprocess_exec(sysvc, "seq", str(ftok_path), "42", str(count), "50")
        got: list[int] = []
        cancelled = in_thread = 0
        with anyio.fail_after(60):
            attempt = 0
            while len(got) < count:
                attempt += 1
                task = asyncio.ensure_future(q.receive())
                for _ in range(attempt % 4):
                    await asyncio.sleep(0)
                in_thread += q._receiver.busy
                task.cancel()
                try:
                    got.append(int(await task))
                except asyncio.CancelledError:
                    cancelled += 1
            assert await producer.wait() == 0
        assert sorted(got) == list(range(count)), "a number was lost or repeated"
        assert got == list(range(count)), "messages came out of order"
        assert cancelled > 300
        assert in_thread > 100, "too few receives were cancelled while the thread waited"
        assert q.extra(SysVQueueAttribute.current_messages) == 0


async def test_cancelled_send_is_whole_or_nothing(key: int) -> None:
    async with await MessageQueue.open(key, create=True) as q:
        chunk = b"\x01" * 1000
        sent = 0

        async def fill() -> None:
            nonlocal sent
            while True:
                await q.send(chunk)
                sent += 1

        task = asyncio.ensure_future(fill())
        await until(lambda: q._sender.busy)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await q.send(b"\x02" * 10)  # waits behind a cancelled send still finishing, if any
        got = []
        with anyio.fail_after(10):
            while not got or got[-1] != b"\x02" * 10:
                got.append(await q.receive())
        assert all(m == chunk for m in got[:-1])
        assert len(got) - 1 == sent, "a send that raised was delivered"


async def test_c_program_sends_typed_messages(key: int, ftok_path: Path, sysvc: Path) -> None:
    async with await MessageQueue.open(key, create=True) as q:
        with anyio.fail_after(20):
            await run_tool(sysvc, "send", ftok_path, "42", "7", "seven", "seven-b")
            await run_tool(sysvc, "send", ftok_path, "42", "2", "two")
            assert await q.receive_with_type(-5) == (b"two", 2)
            assert await q.receive_with_type(7) == (b"seven", 7)
            assert await q.receive_with_type(0) == (b"seven-b", 7)


async def test_c_program_receives_by_type(key: int, ftok_path: Path, sysvc: Path) -> None:
    async with await MessageQueue.open(key, create=True) as q:
        with anyio.fail_after(20):
            await q.send(b"not for you", type=1)
            await q.send(b"for you", type=8)
            receiver = asyncio.ensure_future(run_tool(sysvc, "recv", ftok_path, "42", "8", "2"))
            await q.send(b"also for you", type=8)
            assert (await receiver).splitlines() == ["8:for you", "8:also for you"]
            assert await q.receive_with_type() == (b"not for you", 1)


async def test_address_schemes(key: int, ftok_path: Path) -> None:
    received: list[bytes] = []
    done = asyncio.Event()

    async def handler(queue: MessageQueue) -> None:
        async for message in queue:
            received.append(message)
            if len(received) == 2:
                done.set()

    async with await aioipc.serve(f"sysvmq:{ftok_path}#42", handler):
        async with await aioipc.connect(f"sysvmq:{key & 0xFFFFFFFF:#x}") as q:
            await q.send(b"by key")
        async with await aioipc.connect(f"sysvmq:{ftok_path}#42") as q:
            await q.send(b"by path")
        with anyio.fail_after(5):
            await done.wait()
    assert received == [b"by key", b"by path"]


def test_list_and_remove_need_one_selector() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        aioipc.sysv.remove_message_queue()
    assert os.path.exists("/proc/sysvipc/msg")


async def test_key_zero_is_refused_not_a_new_private_queue() -> None:
    def private_queues() -> int:
        with open("/proc/sysvipc/msg") as table:
            return sum(line.split()[0] == "0" for line in table.read().splitlines()[1:])

    before = private_queues()
    for make in (lambda: MessageQueue.open(0), lambda: MessageQueue.open(0, create=True)):
        with pytest.raises(ValueError, match="bad System V key"):
            await make()
    with pytest.raises(ValueError, match="bad System V key"):
        aioipc.sysv.remove_message_queue(0)
    with pytest.raises(ValueError, match="bad System V key"):
        await MessageQueue.open(2**32)
    assert private_queues() == before


def _wchan(thread: threading.Thread) -> str:
    with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
        return f.read()


def _context_switches(thread: threading.Thread) -> int:
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


async def test_a_waiting_receive_costs_nothing(key: int) -> None:
    """The bridge thread sleeps in msgrcv: it does not wake at all while nothing arrives."""
    before = set(bridge_threads())
    async with await MessageQueue.open(key, create=True) as q:
        receiver = asyncio.ensure_future(q.receive())
        while not (set(bridge_threads()) - before) or not q._receiver.busy:
            await asyncio.sleep(0)
        (thread,) = set(bridge_threads()) - before
        with anyio.fail_after(10):
            while _wchan(thread) != "do_msgrcv":  # asleep in the kernel's msgrcv
                await asyncio.sleep(0)
        switches = _context_switches(thread)
        await asyncio.sleep(0.3)  # an idle period to observe, not a synchronisation
        assert _context_switches(thread) == switches, "the bridge thread woke up while idle"
        await q.send(b"wake")
        with anyio.fail_after(5):
            assert await receiver == b"wake"


async def test_served_queue_is_removed_when_the_server_closes_as_its_handler_ends(key: int) -> None:
    """The handler returning and the server closing race to close the queue; it is removed either way."""
    got: list[bytes] = []
    done = asyncio.Event()

    async def handler(queue: MessageQueue) -> None:
        async for message in queue:
            got.append(message)
            if len(got) == 2:
                done.set()
                return

    async with await aioipc.serve(f"sysvmq:{key}", handler):
        async with await MessageQueue.open(key) as client:
            await client.send(b"a")
            await client.send(b"b")
        with anyio.fail_after(10):
            await done.wait()
    assert got == [b"a", b"b"]
    with pytest.raises(sysv_ipc.ExistentialError):
        sysv_ipc.MessageQueue(key)


# -- between processes: no prefetching, exactly-once sends ------------------------------------

CONSUMER = """
    import sys, anyio, aioipc, aioipc.sysv

    async def main(key, job_seconds):
        async with await aioipc.sysv.MessageQueue.open(key) as q:
            print("ready", flush=True)
            count = 0
            while (data := await q.receive()) != b"end":
                count += 1
                if data.startswith(b"job"):
                    print(data.decode(), flush=True)
                await anyio.sleep(job_seconds)
            print(f"done {count}", flush=True)

    aioipc.run(main(int(sys.argv[2]), float(sys.argv[3])), loop=sys.argv[1])
"""


async def parked_in_msgrcv(consumer: Service) -> None:
    """Wait until a thread of ``consumer`` sleeps in the kernel's msgrcv (its queue was empty)."""

    def parked() -> bool:
        for task in os.listdir(f"/proc/{consumer.pid}/task"):
            with open(f"/proc/{consumer.pid}/task/{task}/wchan") as f:
                if f.read() == "do_msgrcv":
                    return True
        return False

    await consumer.expect("ready")
    await until(parked)


async def test_a_killed_consumer_loses_only_the_message_it_took(key: int, tmp_path: Path) -> None:
    """A consumer parked on an empty queue takes one message, not what arrives behind it."""
    queue = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, 0o600)
    try:
        for _ in range(3):
            async with service(tmp_path, CONSUMER, str(key), "60") as consumer:
                with anyio.fail_after(20):
                    await parked_in_msgrcv(consumer)
                    for i in range(50):  # all at once, while its thread wakes up
                        queue.send(f"job {i}".encode())
                    assert await consumer.line() == "job 0"
                    consumer.proc.kill()
                    await consumer.proc.wait()
            assert queue.current_messages == 49, "the killed consumer took messages nobody asked for"
            while queue.current_messages:
                queue.receive()
    finally:
        queue.remove()


async def test_competing_consumers_share_the_work(key: int, tmp_path: Path) -> None:
    jobs = 60
    async with (
        await MessageQueue.open(key, create=True) as q,
        service(tmp_path, CONSUMER, str(key), "0.01") as first,
        service(tmp_path, CONSUMER, str(key), "0.01") as second,
    ):
        with anyio.fail_after(30):
            await parked_in_msgrcv(first)
            await parked_in_msgrcv(second)
            for i in range(jobs):
                await q.send(f"job {i}".encode())
            await until(lambda: q.extra(SysVQueueAttribute.current_messages) == 0)
            await q.send(b"end")
            await q.send(b"end")
            lines = await first.rest(), await second.rest()
    counts = [int(rest[-1].split()[1]) for rest in lines]
    assert sum(counts) == jobs
    assert min(counts) >= jobs // 4, f"one consumer got {counts}"
    done = sorted(int(line.split()[1]) for rest in lines for line in rest[:-1])
    assert done == list(range(jobs))


async def test_a_send_that_raised_never_arrives(key: int, tmp_path: Path) -> None:
    """Hundreds of sends cancelled against a full queue that a consumer drains: what arrived
    is exactly what returned."""
    async with (
        await MessageQueue.open(key, create=True) as q,
        service(tmp_path, CONSUMER, str(key), "0.001") as consumer,
    ):
        await consumer.expect("ready")
        returned = raised = 0
        with anyio.fail_after(60):
            for i in range(3000):  # until enough were cancelled (a send may spin, then find room)
                if raised >= 60:
                    break
                with anyio.move_on_after(0.0005 * (i % 5)):
                    await q.send(b"x" * 1000)
                    returned += 1
                    continue
                raised += 1
            await q.send(b"end")
            assert await consumer.line() == f"done {returned}"
        assert raised >= 60, "too few sends were cancelled"


async def test_send_and_receive_are_coroutines_to_awaits_and_tasks(key: int) -> None:
    """Compiled, they are coroutines without a frame: nothing happens before the first step."""
    async with await MessageQueue.open(key, create=True) as q:
        with anyio.fail_after(20):
            await check_ops_are_coroutines(
                lambda data: q.send(data, type=3),
                lambda: q.receive(3),
                lambda: q.extra(SysVQueueAttribute.current_messages) == 1,
            )
            with pytest.raises(TypeError):
                q.receive(0, 1)  # type: ignore[call-arg]
            with pytest.raises(TypeError):
                q.send(b"x", kind=1)  # type: ignore[call-arg]
            # a receive cancelled while the bridge thread waited for it took nothing
            async with anyio.create_task_group() as tg:
                tg.start_soon(q.receive)
                await until(lambda: q._receiver.busy)
                tg.cancel_scope.cancel()
            receiving = asyncio.create_task(q.receive_with_type(type=-5))
            await q.send(b"late", type=4)
            assert await receiving == (b"late", 4), "a cancelled receive() took the message"
