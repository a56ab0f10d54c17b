"""Shared memory: the aioipc Ring against unix-stream messages, hand-written rings and queues.

Contenders (two processes each):

- ``ring``: ``aioipc.shm.Ring``; 64 B messages go in batches (``send_many`` /
  ``receive_many``), 1 MiB ones one by one (``receive()`` copies each out).
- ``ring1``: the same ring, one ``send()`` and one ``receive()`` per message.
- ``unix``: aioipc framed messages over a unix stream socketpair.
- ``mpshm``: a single-producer single-consumer ring written by hand on
  ``multiprocessing.shared_memory`` (blocking Python, spins with ``sched_yield``).
- ``mpqueue``: ``multiprocessing.Queue`` (``put`` / ``get`` per message;
  the measuring side spawns its own sender, as the queue must be inherited).
- ``fasterfifo``: ``faster_fifo.Queue`` with its batch calls (``put_many`` /
  ``get_many``), spawned the same way; skipped when not installed.
- ``c``: the same ring as ``mpshm`` in C (``gcc -O2``, C11 atomics), the floor.

Workloads: one way throughput (64 B: msgs/s, 1 MiB: GB/s) and 64 B round
trips (p50, p99; ``ring`` and ``unix`` only). Example::

    python benchmarks/bench_shm.py --transport ring,unix --loop uvloop --size 64 --runs 3
"""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import _harness as h

SCRIPT = os.path.abspath(__file__)
NAME_VARIABLE = "AIOIPC_BENCH_SHM_NAME"
BATCH = 256
LATENCY_SIZES = {64}
HEAD, TAIL, DATA = 0, 64, 128  # the hand-written rings' layout (byte offsets)
WORD = struct.Struct("<Q")


def _record(size: int) -> int:
    return 8 + (size + 7) // 8 * 8


def _hand_ring_bytes(size: int) -> int:
    """Capacity of the hand-written rings: a whole number of records, about 4 MiB."""
    record = _record(size)
    return max(4, 4 * 2**20 // record) * record


# ---------------------------------------------------------------- aioipc ring


async def ring_recv(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.shm import Ring

    (go_fd,) = a.fds
    async with await Ring.create(os.environ[NAME_VARIABLE], max(4 * 2**20, 4 * a.size)) as ring:
        h.signal_go(go_fd)
        await ring.receive()  # the sender attached
        got = 0
        start = time.perf_counter()
        if a.size < 64 * 1024:
            while got < a.count:
                got += len(await ring.receive_many())
        else:
            for _ in range(a.count):
                message = await ring.receive()
            assert len(message) == a.size
        elapsed = time.perf_counter() - start
    return h.throughput_result(elapsed, a.count, a.size)


async def ring_send(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.shm import Ring

    (go_fd,) = a.fds
    h.wait_go(go_fd)
    payload = b"x" * a.size
    async with await Ring.attach(os.environ[NAME_VARIABLE]) as ring:
        await ring.send(b"")
        if a.size < 64 * 1024:
            batch = [payload] * BATCH
            for _ in range(a.count // BATCH):
                await ring.send_many(batch)
            await ring.send_many([payload] * (a.count % BATCH))
        else:
            for _ in range(a.count):
                await ring.send(payload)
        await _until_closed(ring)
    return {}


async def _until_closed(stream: Any) -> None:
    """Wait until the receiver closes (what it receives is not counted)."""
    try:
        await stream.receive()
    except Exception:
        pass


async def ring_ping(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.shm import Ring

    (go_fd,) = a.fds
    async with await Ring.create(os.environ[NAME_VARIABLE], 2**20) as ring:
        h.signal_go(go_fd)
        await ring.receive()
        return await h.ping_messages(ring.send, ring.receive, a)


async def ring_echo(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.shm import Ring

    (go_fd,) = a.fds
    h.wait_go(go_fd)
    async with await Ring.attach(os.environ[NAME_VARIABLE]) as ring:
        await ring.send(b"")
        return await h.echo_messages(ring, ring.send)


async def ring1_recv(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.shm import Ring

    (go_fd,) = a.fds
    async with await Ring.create(os.environ[NAME_VARIABLE], max(4 * 2**20, 4 * a.size)) as ring:
        await ring.receive()  # the sender attached
        return await h.receive_messages(ring.receive, a, go_fd)


async def ring1_send(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.shm import Ring

    (go_fd,) = a.fds
    while True:  # the go byte is for the clock: poll for the ring instead
        try:
            ring = await Ring.attach(os.environ[NAME_VARIABLE])
            break
        except FileNotFoundError:
            time.sleep(0.001)
    async with ring:
        await ring.send(b"")
        await h.send_messages(ring.send, a, go_fd)
        await _until_closed(ring)
    return {}


# ---------------------------------------------------------------- aioipc unix stream


def _unix(fd: int) -> Any:
    import aioipc
    import aioipc.sockets

    return aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=fd)))


async def unix_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    async with _unix(data_fd) as rx:
        return await h.receive_messages(rx.receive, a, go_fd)


async def unix_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    async with _unix(data_fd) as tx:
        await h.send_messages(tx.send, a, go_fd)
        await _until_closed(tx)
    return {}


async def unix_ping(a: h.RoleArgs) -> dict[str, float]:
    (data_fd,) = a.fds
    async with _unix(data_fd) as stream:
        return await h.ping_messages(stream.send, stream.receive, a)


async def unix_echo(a: h.RoleArgs) -> dict[str, float]:
    (data_fd,) = a.fds
    async with _unix(data_fd) as stream:
        return await h.echo_messages(stream, stream.send)


# ---------------------------------------------------------------- a hand-written shared_memory ring


@contextmanager
def _hand_ring() -> Iterator[memoryview]:
    """The buffer of the segment ``measure`` made, attached and closed again."""
    from multiprocessing import resource_tracker, shared_memory

    memory = shared_memory.SharedMemory(name=os.environ[NAME_VARIABLE])
    # The usual workaround: without it, this process's resource tracker
    # would unlink the segment under the other process when this one exits.
    resource_tracker.unregister(memory._name, "shared_memory")  # type: ignore[attr-defined]
    try:
        yield memory.buf
    finally:
        memory.close()


def mpshm_recv(a: h.RoleArgs) -> dict[str, float]:
    (go_fd,) = a.fds
    capacity, record = _hand_ring_bytes(a.size), _record(a.size)
    unpack, pack = WORD.unpack_from, WORD.pack_into
    tail = 0
    with _hand_ring() as buf, h.Stopwatch(go_fd) as watch:
        for _ in range(a.count):
            while unpack(buf, HEAD)[0] == tail:
                os.sched_yield()
            position = DATA + tail % capacity
            size = unpack(buf, position)[0]
            message = bytes(buf[position + 8 : position + 8 + size])
            tail += record
            pack(buf, TAIL, tail)
    assert len(message) == a.size
    return watch.result(a.count, a.size)


def mpshm_send(a: h.RoleArgs) -> dict[str, float]:
    (go_fd,) = a.fds
    capacity, record = _hand_ring_bytes(a.size), _record(a.size)
    unpack, pack = WORD.unpack_from, WORD.pack_into
    payload = b"x" * a.size
    head = 0
    with _hand_ring() as buf:
        h.wait_go(go_fd)
        for _ in range(a.count):
            while head - unpack(buf, TAIL)[0] >= capacity:
                os.sched_yield()
            position = DATA + head % capacity
            pack(buf, position, a.size)
            buf[position + 8 : position + 8 + a.size] = payload
            head += record
            pack(buf, HEAD, head)
    return {}


# ---------------------------------------------------------------- multiprocessing.Queue and faster-fifo


def _make_queue(kind: str, context: object) -> object:
    if kind == "fasterfifo":
        import faster_fifo

        return faster_fifo.Queue(max_size_bytes=4 * 2**20)
    return context.Queue(maxsize=10_000)  # type: ignore[attr-defined]


def _queue_sender(kind: str, queue: object, size: int, count: int, cpu: int) -> None:
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    payload = b"x" * size
    if kind == "fasterfifo":  # its batch API, as the ring's
        queue.put(payload)  # type: ignore[attr-defined]
        batch = [payload] * BATCH
        for _ in range((count - 1) // BATCH):
            queue.put_many(batch, timeout=60)  # type: ignore[attr-defined]
        if (count - 1) % BATCH:
            queue.put_many([payload] * ((count - 1) % BATCH), timeout=60)  # type: ignore[attr-defined]
        return
    put = queue.put  # type: ignore[attr-defined]
    for _ in range(count):
        put(payload)


def _queue_recv(kind: str, a: h.RoleArgs) -> dict[str, float]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = _make_queue(kind, context)
    other = sorted(os.sched_getaffinity(0))
    cpus = sorted(os.sched_getaffinity(os.getppid()))
    cpu = next((c for c in cpus if c not in other), -1)
    sender = context.Process(target=_queue_sender, args=(kind, queue, a.size, a.count, cpu))
    sender.start()
    message = queue.get(timeout=60)  # type: ignore[attr-defined]  # the sender is up
    got = 1
    with h.Stopwatch(None) as watch:
        if kind == "fasterfifo":
            while got < a.count:
                messages = queue.get_many(timeout=60)  # type: ignore[attr-defined]
                got += len(messages)
            message = messages[-1]
        else:
            get = queue.get  # type: ignore[attr-defined]
            for _ in range(a.count - 1):
                message = get()
    sender.join()
    assert len(message) == a.size
    return watch.result(a.count - 1, a.size)


def mpqueue_recv(a: h.RoleArgs) -> dict[str, float]:
    return _queue_recv("mpqueue", a)


def fasterfifo_recv(a: h.RoleArgs) -> dict[str, float]:
    return _queue_recv("fasterfifo", a)


def idle_peer(a: h.RoleArgs) -> dict[str, float]:
    return {}


# ---------------------------------------------------------------- wiring


ROLES: dict[tuple[str, str], h.Role] = {
    **h.roles("ring", recv=ring_recv, send=ring_send, ping=ring_ping, echo=ring_echo),
    **h.roles("ring1", recv=ring1_recv, send=ring1_send, ping=ring_ping, echo=ring_echo),
    **h.roles("unix", recv=unix_recv, send=unix_send, ping=unix_ping, echo=unix_echo),
    **h.roles("mpshm", recv=mpshm_recv, send=mpshm_send),
    **h.roles("mpqueue", recv=mpqueue_recv, send=idle_peer),
    **h.roles("fasterfifo", recv=fasterfifo_recv, send=idle_peer),
}

LABELS = {
    "ring": "aioipc shm Ring",
    "ring1": "aioipc shm Ring, one send() per message",
    "unix": "aioipc unix stream, framed",
    "mpshm": "hand-written shared_memory ring (sync)",
    "mpqueue": "multiprocessing.Queue (sync)",
    "fasterfifo": "faster-fifo Queue, put_many/get_many (sync)",
    "c": "C shared-memory ring (gcc -O2)",
}
ASYNC = ("ring", "ring1", "unix")
QUEUES = ("mpqueue", "fasterfifo")


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: fresh kernel objects, the measuring side on ``cpus[0]``, its peer on ``cpus[1]``."""
    from multiprocessing import shared_memory

    transport = contender.transport
    throughput = workload.kind == "throughput"
    measure_role, peer_role = ("recv", "send") if throughput else ("ping", "echo")
    go_r, go_w = os.pipe()  # the go byte
    measure_fds: tuple[int, ...] = (go_w,)
    peer_fds: tuple[int, ...] = (go_r,)
    os.environ[NAME_VARIABLE] = f"/aioipc-bench-{uuid.uuid4().hex[:12]}"
    memory = None
    if transport == "unix":
        a, b = socket.socketpair()
        if throughput:
            measure_fds, peer_fds = (a.detach(), go_w), (b.detach(), go_r)
        else:
            os.close(go_r)
            os.close(go_w)
            measure_fds, peer_fds = (a.detach(),), (b.detach(),)
    elif transport in ("mpshm", "c"):
        memory = shared_memory.SharedMemory(create=True, size=128 + _hand_ring_bytes(workload.size))
        os.environ[NAME_VARIABLE] = memory.name
        if transport == "c":
            fd = os.open("/dev/shm/" + memory.name.lstrip("/"), os.O_RDWR)
            measure_fds, peer_fds = (fd, go_w), (os.dup(fd), go_r)
    binary = h.build_c("shm_ring") if transport == "c" else None
    try:
        return h.run_sides(
            SCRIPT,
            contender,
            workload,
            cpus,
            (measure_role, measure_fds),
            (peer_role, peer_fds),
            binary=binary,
        )
    finally:
        if memory is not None:
            memory.close()
            memory.unlink()


def _has_faster_fifo() -> bool:
    try:
        import faster_fifo  # noqa: F401
    except ImportError:
        return False
    return True


def _throughput_count(size: int) -> int:
    return 300_000 if size < h.BULK_SIZE else 500


def applies(contender: h.Contender, workload: h.Workload) -> bool:
    if workload.kind == "latency":
        return contender.transport in ("ring", "unix")
    if contender.transport == "ring1":
        return workload.size < h.BULK_SIZE
    return not (contender.transport in QUEUES and workload.size >= 64 * 1024)


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratios issues 6 and 12 name."""
    small, big, rtt = h.Workload("throughput", 64), h.Workload("throughput", 2**20), h.Workload("latency", 64)
    wanted: list[h.TargetSpec] = []
    for loop in ("asyncio", "uvloop"):
        ring, unix = f"ring@{loop}", f"unix@{loop}"
        wanted += [
            (f"ring/C 1 MiB GB/s, {loop}", ring, "c", big, "gb_per_s", ">=", 0.6),
            (f"ring/shared_memory ring 1 MiB GB/s, {loop}", ring, "mpshm", big, "gb_per_s", ">=", 1.0),
            (f"ring/unix 64 B msgs/s, {loop}", ring, unix, small, "msgs_per_s", ">=", 1.5),
            (f"ring/mp.Queue 64 B msgs/s, {loop}", ring, "mpqueue", small, "msgs_per_s", ">=", 5),
            (f"ring/faster-fifo 64 B msgs/s, {loop}", ring, "fasterfifo", small, "msgs_per_s", ">=", 3),
            (
                f"ring one send()/unix 64 B msgs/s, {loop}",
                f"ring1@{loop}",
                unix,
                small,
                "msgs_per_s",
                ">=",
                2.0,
            ),
            (f"ring/unix 64 B RTT p50, {loop}", ring, unix, rtt, "p50_us", "<=", 0.25),
        ]
    return h.targets(contenders, wanted)


def main(argv: list[str] | None = None) -> bool:
    """Run the shared-memory benchmarks, print the table and the ratios; True when every target is met."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    available = ["ring", "ring1", "unix", "mpshm", "mpqueue"] + (["fasterfifo"] if _has_faster_fifo() else [])
    available += ["c"] if h.build_c("shm_ring") else []
    missing = "gcc or faster-fifo missing?"
    contenders = h.pick_contenders(args, LABELS, available=available, asynchronous=ASYNC, missing=missing)
    workloads = h.make_workloads(args, [64, 2**20], _throughput_count, latency_sizes=LATENCY_SIZES)
    wanted = targets_for(contenders)
    return h.report("shared memory", measure, contenders, workloads, args.runs, wanted, applies=applies)


if __name__ == "__main__":
    h.script_main(ROLES, main)
