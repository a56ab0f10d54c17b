"""Message queues: aioipc against blocking posix_ipc / sysv_ipc and a bare add_reader(mqd) loop.

Both sides are separate processes exchanging ``--size``-byte messages over
queues the harness creates (their names and keys reach the sides in the
environment):

- ``aioipc``: ``aioipc.mq`` (POSIX queue, the descriptor on the loop).
- ``add_reader``: the same queue driven by hand: non-blocking ``posix_ipc``
  calls, ``loop.add_reader`` / ``add_writer`` on ``mqd`` when they would block.
- ``posix_ipc``: blocking ``posix_ipc`` send/receive in a tight loop (no loop).
- ``aioipc-sysv``: ``aioipc.sysv.MessageQueue`` (System V, bridge thread).
- ``sysv_ipc``: blocking ``sysv_ipc`` send/receive in a tight loop.

Workloads: one way throughput (msgs/s) and round trips (p50, p99; two
queues, one each way). Example::

    python benchmarks/bench_mq.py --transport aioipc,posix_ipc --loop uvloop --runs 3
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable

import _harness as h
import posix_ipc
import sysv_ipc

SCRIPT = os.path.abspath(__file__)
ENV_A, ENV_B = "AIOIPC_BENCH_QUEUE_A", "AIOIPC_BENCH_QUEUE_B"  # names or keys of the two queues
POSIX = {"aioipc", "add_reader", "posix_ipc"}


def _queue_a() -> str:
    return os.environ[ENV_A]


def _queue_b() -> str:
    return os.environ[ENV_B]


# ---------------------------------------------------------------- async endpoints

Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[bytes]]


async def _aioipc_endpoint(transport: str, name: str, stack: list[object]) -> tuple[Send, Receive]:
    if transport == "aioipc":
        import aioipc.mq

        queue = await aioipc.mq.open(name)
    else:
        import aioipc.sysv

        queue = await aioipc.sysv.MessageQueue.open(int(name))  # type: ignore[assignment]
    stack.append(queue)
    return queue.send, queue.receive


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _bare_endpoint(name: str) -> tuple[Send, Receive]:
    """The floor: posix_ipc on a non-blocking mqd, registered with the loop once for reading
    (add_writer only while the queue is full)."""
    queue = posix_ipc.MessageQueue(name)
    mqd = queue.mqd
    os.set_blocking(mqd, False)
    loop = asyncio.get_running_loop()
    readable: list[asyncio.Future[None]] = []

    loop.add_reader(mqd, lambda: readable and _wake(readable[0]))

    async def send(data: bytes) -> None:
        while True:
            try:
                return queue.send(data)  # type: ignore[no-any-return]
            except posix_ipc.BusyError:
                future: asyncio.Future[None] = loop.create_future()
                loop.add_writer(mqd, _wake, future)
                try:
                    await future
                finally:
                    loop.remove_writer(mqd)

    async def receive() -> bytes:
        while True:
            try:
                return queue.receive()[0]  # type: ignore[no-any-return]
            except posix_ipc.BusyError:
                readable[:] = [loop.create_future()]
                await readable[0]

    return send, receive


async def _endpoint(transport: str, name: str, stack: list[object]) -> tuple[Send, Receive]:
    if transport == "add_reader":
        return _bare_endpoint(name)
    return await _aioipc_endpoint(transport, name, stack)


async def _close(stack: list[object]) -> None:
    for queue in stack:
        await queue.aclose()  # type: ignore[attr-defined]


async def async_send(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    stack: list[object] = []
    send, _ = await _endpoint(transport, _queue_a(), stack)
    payload = b"x" * a.size
    h.wait_go(go_fd)
    for _ in range(a.count):
        await send(payload)
    await _close(stack)
    return {}


async def async_recv(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    stack: list[object] = []
    _, receive = await _endpoint(transport, _queue_a(), stack)
    start = time.perf_counter()
    h.signal_go(go_fd)
    for _ in range(a.count):
        message = await receive()
    elapsed = time.perf_counter() - start
    await _close(stack)
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


async def async_ping(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    stack: list[object] = []
    send, _ = await _endpoint(transport, _queue_a(), stack)
    _, receive = await _endpoint(transport, _queue_b(), stack)
    h.signal_go(go_fd)
    payload = b"x" * a.size
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    for i in range(warmup + a.count):
        start = clock()
        await send(payload)
        await receive()
        if i >= warmup:
            latencies.append(clock() - start)
    await send(b"")  # tells the echo side to stop
    await _close(stack)
    return h.latency_result(latencies)


async def async_echo(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    stack: list[object] = []
    _, receive = await _endpoint(transport, _queue_a(), stack)
    send, _ = await _endpoint(transport, _queue_b(), stack)
    h.wait_go(go_fd)
    while message := await receive():
        await send(message)
    await _close(stack)
    return {}


# ---------------------------------------------------------------- blocking baselines


def _blocking(transport: str, name: str) -> tuple[Callable[[bytes], object], Callable[[], bytes]]:
    if transport == "posix_ipc":
        pq = posix_ipc.MessageQueue(name)
        return pq.send, lambda: pq.receive()[0]  # type: ignore[no-any-return]
    sq = sysv_ipc.MessageQueue(int(name))
    return sq.send, lambda: sq.receive()[0]  # type: ignore[no-any-return]


def blocking_send(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    send, _ = _blocking(transport, _queue_a())
    payload = b"x" * a.size
    h.wait_go(go_fd)
    for _ in range(a.count):
        send(payload)
    return {}


def blocking_recv(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    _, receive = _blocking(transport, _queue_a())
    start = time.perf_counter()
    h.signal_go(go_fd)
    for _ in range(a.count):
        message = receive()
    elapsed = time.perf_counter() - start
    assert len(message) == a.size
    return h.throughput_result(elapsed, a.count, a.size)


def blocking_ping(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    send, _ = _blocking(transport, _queue_a())
    _, receive = _blocking(transport, _queue_b())
    h.signal_go(go_fd)
    payload = b"x" * a.size
    latencies = []
    clock = time.perf_counter
    warmup = h.warmup_rounds(a.count)
    for i in range(warmup + a.count):
        start = clock()
        send(payload)
        receive()
        if i >= warmup:
            latencies.append(clock() - start)
    send(b"")
    return h.latency_result(latencies)


def blocking_echo(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    _, receive = _blocking(transport, _queue_a())
    send, _ = _blocking(transport, _queue_b())
    h.wait_go(go_fd)
    while message := receive():
        send(message)
    return {}


# ---------------------------------------------------------------- wiring

ASYNC = {"aioipc", "add_reader", "aioipc-sysv"}
LABELS = {
    "aioipc": "aioipc.mq (POSIX, on the loop)",
    "add_reader": "bare add_reader(mqd) loop",
    "posix_ipc": "posix_ipc blocking (sync)",
    "aioipc-sysv": "aioipc.sysv (bridge thread)",
    "sysv_ipc": "sysv_ipc blocking (sync)",
}


def _role(function: Callable[..., object], transport: str) -> h.Role:
    if transport in ASYNC:
        return lambda a: h.run_async(function(a, transport), a.loop)  # type: ignore[arg-type]
    return lambda a: function(a, transport)  # type: ignore[return-value]


ROLES: dict[tuple[str, str], h.Role] = {}
for _transport in LABELS:
    _async = _transport in ASYNC
    for _name, _function in (
        ("send", async_send if _async else blocking_send),
        ("recv", async_recv if _async else blocking_recv),
        ("ping", async_ping if _async else blocking_ping),
        ("echo", async_echo if _async else blocking_echo),
    ):
        ROLES[(_name, _transport)] = _role(_function, _transport)


def measure(contender: h.Contender, workload: h.Workload, cpus: tuple[int, int]) -> dict[str, float]:
    """One measurement: two fresh queues (10 messages deep), the measuring side on ``cpus[0]``."""
    go_r, go_w = os.pipe()
    created: list[object] = []
    try:
        for env in (ENV_A, ENV_B):
            if contender.transport in POSIX:
                name = f"/aioipc-bench-{os.getpid()}-{random.getrandbits(32):x}"
                created.append(posix_ipc.MessageQueue(name, posix_ipc.O_CREX, 0o600, 10, workload.size))
                os.environ[env] = name
            else:
                queue = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, 0o600)
                created.append(queue)
                os.environ[env] = str(queue.key)
        roles = ("recv", "send") if workload.kind == "throughput" else ("ping", "echo")
        measure_argv = h.role_command(SCRIPT, roles[0], contender, workload, (go_w,), cpus[0])
        peer_argv = h.role_command(SCRIPT, roles[1], contender, workload, (go_r,), cpus[1])
        return h.run_pair(measure_argv, peer_argv, measure_fds=(go_w,), peer_fds=(go_r,))
    finally:
        for queue in created:
            if isinstance(queue, posix_ipc.MessageQueue):
                queue.unlink()
                queue.close()
            else:
                queue.remove()  # type: ignore[attr-defined]


def contenders_for(transports: list[str] | None, loops: list[str]) -> list[h.Contender]:
    chosen = transports or list(LABELS)
    unknown = set(chosen) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown transport(s) {sorted(unknown)}; choose from {sorted(LABELS)}")
    result = []
    for transport in chosen:
        if transport in ASYNC:
            result += [h.Contender(transport, LABELS[transport], loop) for loop in loops]
        else:
            result.append(h.Contender(transport, LABELS[transport]))
    return result


def workloads_for(sizes: list[int] | None, count: int | None, quick: bool) -> list[h.Workload]:
    scale = 5 if quick else 1
    workloads = []
    for size in sizes or [64]:
        workloads.append(h.Workload("throughput", size, count or 200_000 // scale))
        workloads.append(h.Workload("latency", size, count or 10_000 // scale))
    return workloads


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratios issue 5 names."""
    by_key = {c.key: c for c in contenders}
    tput, rtt = h.Workload("throughput", 64), h.Workload("latency", 64)
    targets = []
    posix, sysv = by_key.get("posix_ipc"), by_key.get("sysv_ipc")
    for loop in ("asyncio", "uvloop"):
        ours, bare, ours_sysv = (by_key.get(f"{t}@{loop}") for t in ("aioipc", "add_reader", "aioipc-sysv"))
        if ours and posix and loop == "uvloop":
            name = f"aioipc/posix_ipc 64 B msgs/s, {loop}"
            targets.append(h.Target(name, ours, posix, tput, "msgs_per_s", ">=", 0.9))
        if ours and bare:
            name = f"aioipc/add_reader 64 B RTT p50, {loop}"
            targets.append(h.Target(name, ours, bare, rtt, "p50_us", "<=", 1.2))
        if ours_sysv and sysv:
            name = f"aioipc-sysv/sysv_ipc 64 B msgs/s, {loop}"
            targets.append(h.Target(name, ours_sysv, sysv, tput, "msgs_per_s", ">=", 0.5))
    return targets


def main(argv: list[str] | None = None) -> bool:
    """Run the queue benchmarks, print the table and the ratios; True when every target is met."""
    args = h.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    contenders = contenders_for(args.transport, args.loop)
    workloads = workloads_for(args.size, args.count, args.quick)
    runs = args.runs or (3 if args.quick else 5)
    results = h.collect(measure, contenders, workloads, runs)
    h.print_table("message queues", results, contenders, workloads, runs)
    return h.print_targets(results, targets_for(contenders))


if __name__ == "__main__":
    if h.ROLE_FLAG in sys.argv:
        h.role_main(ROLES)
    main()
