"""Shared memory: the aioipc Ring against unix-stream messages, hand-written rings and queues.

Contenders (two processes each):

- ``ring``: ``aioipc.shm.Ring``; 64 B messages go in batches (``send_many`` /
  ``receive_many``), 1 MiB ones one by one (``receive()`` copies each out).
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
import subprocess
import sys
import time
import uuid

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
        try:
            await ring.receive()  # until the receiver closes
        except Exception:
            pass
    return {}


async def ring_ping(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.shm import Ring

    (go_fd,) = a.fds
    payload = b"x" * a.size
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    async with await Ring.create(os.environ[NAME_VARIABLE], 2**20) as ring:
        h.signal_go(go_fd)
        await ring.receive()
        for i in range(warmup + a.count):
            start = clock()
            await ring.send(payload)
            await ring.receive()
            if i >= warmup:
                latencies.append(clock() - start)
    return h.latency_result(latencies)


async def ring_echo(a: h.RoleArgs) -> dict[str, float]:
    from aioipc.shm import Ring

    (go_fd,) = a.fds
    h.wait_go(go_fd)
    async with await Ring.attach(os.environ[NAME_VARIABLE]) as ring:
        await ring.send(b"")
        async for message in ring:
            await ring.send(message)
    return {}


# ---------------------------------------------------------------- aioipc unix stream


def _unix(fd: int) -> object:
    import aioipc
    import aioipc.sockets

    return aioipc.framed(aioipc.sockets.from_socket(socket.socket(fileno=fd)))


async def unix_recv(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    async with _unix(data_fd) as rx:  # type: ignore[attr-defined]
        start = time.perf_counter()
        h.signal_go(go_fd)
        for _ in range(a.count):
            message = await rx.receive()
        elapsed = time.perf_counter() - start
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


async def unix_send(a: h.RoleArgs) -> dict[str, float]:
    data_fd, go_fd = a.fds
    payload = b"x" * a.size
    async with _unix(data_fd) as tx:  # type: ignore[attr-defined]
        h.wait_go(go_fd)
        for _ in range(a.count):
            await tx.send(payload)
        try:
            await tx.receive()  # until the receiver closes
        except Exception:
            pass
    return {}


async def unix_ping(a: h.RoleArgs) -> dict[str, float]:
    (data_fd,) = a.fds
    payload = b"x" * a.size
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    async with _unix(data_fd) as stream:  # type: ignore[attr-defined]
        for i in range(warmup + a.count):
            start = clock()
            await stream.send(payload)
            await stream.receive()
            if i >= warmup:
                latencies.append(clock() - start)
    return h.latency_result(latencies)


async def unix_echo(a: h.RoleArgs) -> dict[str, float]:
    (data_fd,) = a.fds
    async with _unix(data_fd) as stream:  # type: ignore[attr-defined]
        async for message in stream:
            await stream.send(message)
    return {}


# ---------------------------------------------------------------- a hand-written shared_memory ring


def _attach_untracked(name: str) -> object:
    from multiprocessing import resource_tracker, shared_memory

    memory = shared_memory.SharedMemory(name=name)
    # The usual workaround: without it, this process's resource tracker
    # would unlink the segment under the other process when this one exits.
    resource_tracker.unregister(memory._name, "shared_memory")  # type: ignore[attr-defined]
    return memory


def mpshm_recv(a: h.RoleArgs) -> dict[str, float]:
    (go_fd,) = a.fds
    memory = _attach_untracked(os.environ[NAME_VARIABLE])
    buf = memory.buf  # type: ignore[attr-defined]
    capacity, record = _hand_ring_bytes(a.size), _record(a.size)
    unpack, pack = WORD.unpack_from, WORD.pack_into
    tail = 0
    start = time.perf_counter()
    h.signal_go(go_fd)
    for _ in range(a.count):
        while unpack(buf, HEAD)[0] == tail:
            os.sched_yield()
        position = DATA + tail % capacity
        size = unpack(buf, position)[0]
        message = bytes(buf[position + 8 : position + 8 + size])
        tail += record
        pack(buf, TAIL, tail)
    elapsed = time.perf_counter() - start
    assert len(message) == a.size
    del buf
    memory.close()  # type: ignore[attr-defined]
    return h.throughput_result(elapsed, a.count, a.size)


def mpshm_send(a: h.RoleArgs) -> dict[str, float]:
    (go_fd,) = a.fds
    memory = _attach_untracked(os.environ[NAME_VARIABLE])
    buf = memory.buf  # type: ignore[attr-defined]
    capacity, record = _hand_ring_bytes(a.size), _record(a.size)
    unpack, pack = WORD.unpack_from, WORD.pack_into
    payload = b"x" * a.size
    head = 0
    h.wait_go(go_fd)
    for _ in range(a.count):
        while head - unpack(buf, TAIL)[0] >= capacity:
            os.sched_yield()
        position = DATA + head % capacity
        pack(buf, position, a.size)
        buf[position + 8 : position + 8 + a.size] = payload
        head += record
        pack(buf, HEAD, head)
    del buf
    memory.close()  # type: ignore[attr-defined]
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
    start = time.perf_counter()
    if kind == "fasterfifo":
        while got < a.count:
            messages = queue.get_many(timeout=60)  # type: ignore[attr-defined]
            got += len(messages)
        message = messages[-1]
    else:
        get = queue.get  # type: ignore[attr-defined]
        for _ in range(a.count - 1):
            message = get()
    elapsed = time.perf_counter() - start
    sender.join()
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count - 1, a.size)


def mpqueue_recv(a: h.RoleArgs) -> dict[str, float]:
    return _queue_recv("mpqueue", a)


def fasterfifo_recv(a: h.RoleArgs) -> dict[str, float]:
    return _queue_recv("fasterfifo", a)


def idle_peer(a: h.RoleArgs) -> dict[str, float]:
    return {}


# ---------------------------------------------------------------- the C floor

C_RING = r"""
/* The floor: the hand-written SPSC ring of bench_shm.py in C, on an inherited memfd.
 *   shm_ring recv FD GO SIZE COUNT CPU  |  shm_ring send FD GO SIZE COUNT CPU */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 7) return 2;
    int fd = atoi(argv[2]), go = atoi(argv[3]), cpu = atoi(argv[6]);
    size_t size = strtoull(argv[4], NULL, 10), count = strtoull(argv[5], NULL, 10);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    size_t record = 8 + (size + 7) / 8 * 8, per = 4u << 20;
    size_t capacity = (per / record < 4 ? 4 : per / record) * record;
    uint8_t *base = mmap(NULL, 128 + capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 2; }
    _Atomic uint64_t *head = (_Atomic uint64_t *)base, *tail = (_Atomic uint64_t *)(base + 64);
    uint8_t *data = base + 128, *message = malloc(size + 1);
    char byte = 'g';
    if (argv[1][0] == 'r') {
        uint64_t t = 0;
        double start = now();
        if (write(go, &byte, 1) != 1) return 2;
        for (size_t i = 0; i < count; i++) {
            while (atomic_load_explicit(head, memory_order_acquire) == t) sched_yield();
            uint8_t *at = data + t % capacity;
            uint64_t n;
            memcpy(&n, at, 8);
            memcpy(message, at + 8, n);
            t += record;
            atomic_store_explicit(tail, t, memory_order_release);
        }
        printf("{\"elapsed\": %.9f, \"count\": %zu, \"size\": %zu}\n", now() - start, count, size);
    } else {
        memset(message, 'x', size);
        uint64_t hd = 0, n = size;
        if (read(go, &byte, 1) != 1) return 2;
        for (size_t i = 0; i < count; i++) {
            while (hd - atomic_load_explicit(tail, memory_order_acquire) >= capacity) sched_yield();
            uint8_t *at = data + hd % capacity;
            memcpy(at, &n, 8);
            memcpy(at + 8, message, size);
            hd += record;
            atomic_store_explicit(head, hd, memory_order_release);
        }
    }
    return 0;
}
"""


def build_c_ring() -> str | None:
    """Compile the C floor into the build directory (once); ``None`` without gcc."""
    import shutil

    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    h.BUILD_DIR.mkdir(exist_ok=True)
    source, binary = h.BUILD_DIR / "shm_ring.c", h.BUILD_DIR / "shm_ring"
    if not source.exists() or source.read_text() != C_RING:
        source.write_text(C_RING)
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run([gcc, "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return str(binary)


# ---------------------------------------------------------------- wiring


def _async_role(function: object) -> h.Role:
    def role(a: h.RoleArgs) -> dict[str, float]:
        return h.run_async(function(a), a.loop)  # type: ignore[operator]

    return role


ROLES: dict[tuple[str, str], h.Role] = {
    ("recv", "ring"): _async_role(ring_recv),
    ("send", "ring"): _async_role(ring_send),
    ("ping", "ring"): _async_role(ring_ping),
    ("echo", "ring"): _async_role(ring_echo),
    ("recv", "unix"): _async_role(unix_recv),
    ("send", "unix"): _async_role(unix_send),
    ("ping", "unix"): _async_role(unix_ping),
    ("echo", "unix"): _async_role(unix_echo),
    ("recv", "mpshm"): mpshm_recv,
    ("send", "mpshm"): mpshm_send,
    ("recv", "mpqueue"): mpqueue_recv,
    ("send", "mpqueue"): idle_peer,
    ("recv", "fasterfifo"): fasterfifo_recv,
    ("send", "fasterfifo"): idle_peer,
}

LABELS = {
    "ring": "aioipc shm Ring",
    "unix": "aioipc unix stream, framed",
    "mpshm": "hand-written shared_memory ring (sync)",
    "mpqueue": "multiprocessing.Queue (sync)",
    "fasterfifo": "faster-fifo Queue, put_many/get_many (sync)",
    "c": "C shared-memory ring (gcc -O2)",
}
ASYNC = ("ring", "unix")
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
    try:
        if transport == "c":
            binary = build_c_ring()
            assert binary is not None
            numbers = [str(workload.size), str(workload.count)]
            measure_argv = [binary, "recv", *map(str, measure_fds), *numbers, str(cpus[0])]
            peer_argv = [binary, "send", *map(str, peer_fds), *numbers, str(cpus[1])]
        else:
            measure_argv = h.role_command(SCRIPT, measure_role, contender, workload, measure_fds, cpus[0])
            peer_argv = h.role_command(SCRIPT, peer_role, contender, workload, peer_fds, cpus[1])
        return h.run_pair(measure_argv, peer_argv, measure_fds=measure_fds, peer_fds=peer_fds)
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


def contenders_for(transports: list[str] | None, loops: list[str]) -> list[h.Contender]:
    available = ["ring", "unix", "mpshm", "mpqueue"] + (["fasterfifo"] if _has_faster_fifo() else [])
    available += ["c"] if build_c_ring() else []
    chosen = transports or available
    unknown = set(chosen) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown transport(s) {sorted(unknown)}; choose from {sorted(LABELS)}")
    result = []
    for transport in chosen:
        if transport not in available:
            print(f"skipping {transport}: not available (gcc or faster-fifo missing?)", file=sys.stderr)
        elif transport in ASYNC:
            result += [h.Contender(transport, LABELS[transport], loop) for loop in loops]
        else:
            result.append(h.Contender(transport, LABELS[transport]))
    return result


def workloads_for(sizes: list[int] | None, count: int | None, quick: bool) -> list[h.Workload]:
    scale = 5 if quick else 1
    workloads = []
    for size in sizes or [64, 2**20]:
        default = 300_000 if size < 64 * 1024 else 500
        workloads.append(h.Workload("throughput", size, count or default // scale))
        if size in LATENCY_SIZES:
            workloads.append(h.Workload("latency", size, count or 10_000 // scale))
    return sorted(workloads, key=lambda w: (w.size, w.kind))


def applies(contender: h.Contender, workload: h.Workload) -> bool:
    if workload.kind == "latency":
        return contender.transport in ASYNC
    return not (contender.transport in QUEUES and workload.size >= 64 * 1024)


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratios issue 6 names."""
    by_key = {c.key: c for c in contenders}
    small, big, rtt = h.Workload("throughput", 64), h.Workload("throughput", 2**20), h.Workload("latency", 64)
    targets = []
    for loop in ("asyncio", "uvloop"):
        ring, unix = by_key.get(f"ring@{loop}"), by_key.get(f"unix@{loop}")
        if ring is None:
            continue
        pairs = [
            (f"ring/C 1 MiB GB/s, {loop}", by_key.get("c"), big, "gb_per_s", ">=", 0.6),
            (f"ring/shared_memory ring 1 MiB GB/s, {loop}", by_key.get("mpshm"), big, "gb_per_s", ">=", 1.0),
            (f"ring/unix 64 B msgs/s, {loop}", unix, small, "msgs_per_s", ">=", 1.5),
            (f"ring/mp.Queue 64 B msgs/s, {loop}", by_key.get("mpqueue"), small, "msgs_per_s", ">=", 5),
            (f"ring/faster-fifo 64 B msgs/s, {loop}", by_key.get("fasterfifo"), small, "msgs_per_s", ">=", 3),
            (f"ring/unix 64 B RTT p50, {loop}", unix, rtt, "p50_us", "<=", 1.0),
        ]
        targets += [
            h.Target(name, ring, other, workload, metric, op, bound)  # type: ignore[arg-type]
            for name, other, workload, metric, op, bound in pairs
            if other is not None
        ]
    return targets


def main(argv: list[str] | None = None) -> bool:
    """Run the shared-memory benchmarks, print the table and the ratios; True when every target is met."""
    args = h.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    contenders = contenders_for(args.transport, args.loop)
    workloads = workloads_for(args.size, args.count, args.quick)
    runs = args.runs or (3 if args.quick else 5)

    results = h.Results()
    for workload in workloads:  # not every contender has every workload
        chosen = [contender for contender in contenders if applies(contender, workload)]
        results.samples.update(h.collect(measure, chosen, [workload], runs).samples)
    h.print_table("shared memory", results, contenders, workloads, runs)
    return h.print_targets(results, targets_for(contenders))


if __name__ == "__main__":
    if h.ROLE_FLAG in sys.argv:
        h.role_main(ROLES)
    main()
