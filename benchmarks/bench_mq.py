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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

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


async def _aioipc_endpoint(transport: str, name: str, stack: list[object]) -> tuple[h.Send, h.Receive]:
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


def _bare_endpoint(name: str) -> tuple[h.Send, h.Receive]:
    """The floor: posix_ipc on a non-blocking mqd, registered with the loop for reading once,
    at the first receive (add_writer only while the queue is full).

    Not before: a reader registered on the queue a side only sends to would turn the loop
    into a busy poll for as long as a message it sent waits there."""
    queue = posix_ipc.MessageQueue(name)
    mqd = queue.mqd
    os.set_blocking(mqd, False)
    loop = asyncio.get_running_loop()
    readable: list[asyncio.Future[None]] = []

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
                if not readable:
                    loop.add_reader(mqd, lambda: _wake(readable[0]))
                readable[:] = [loop.create_future()]
                await readable[0]

    return send, receive


async def _endpoint(transport: str, name: str, stack: list[object]) -> tuple[h.Send, h.Receive]:
    if transport == "add_reader":
        return _bare_endpoint(name)
    return await _aioipc_endpoint(transport, name, stack)


@asynccontextmanager
async def _queues(transport: str, *names: str) -> AsyncIterator[list[tuple[h.Send, h.Receive]]]:
    """``(send, receive)`` for each named queue, closed on the way out."""
    stack: list[object] = []
    yield [await _endpoint(transport, name, stack) for name in names]
    for queue in stack:
        await queue.aclose()  # type: ignore[attr-defined]


async def async_send(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    async with _queues(transport, _queue_a()) as [(send, _)]:
        return await h.send_messages(send, a, go_fd)


async def async_recv(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    async with _queues(transport, _queue_a()) as [(_, receive)]:
        return await h.receive_messages(receive, a, go_fd)


async def async_ping(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    async with _queues(transport, _queue_a(), _queue_b()) as [(send, _), (_, receive)]:
        h.signal_go(go_fd)
        result = await h.ping_messages(send, receive, a)
        await send(b"")  # tells the echo side to stop
    return result


async def async_echo(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    async with _queues(transport, _queue_a(), _queue_b()) as [(_, receive), (send, _)]:
        h.wait_go(go_fd)
        while message := await receive():
            await send(message)
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
    with h.Stopwatch(go_fd) as watch:
        for _ in range(a.count):
            message = receive()
    assert len(message) == a.size
    return watch.result(a.count, a.size)


def blocking_ping(a: h.RoleArgs, transport: str) -> dict[str, float]:
    (go_fd,) = a.fds
    send, _ = _blocking(transport, _queue_a())
    _, receive = _blocking(transport, _queue_b())
    h.signal_go(go_fd)
    payload = b"x" * a.size
    rounds = h.RoundTrips(a.count)
    for _ in rounds:
        send(payload)
        receive()
    send(b"")
    return rounds.result()


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
        return h.run_sides(SCRIPT, contender, workload, cpus, (roles[0], (go_w,)), (roles[1], (go_r,)))
    finally:
        for queue in created:
            if isinstance(queue, posix_ipc.MessageQueue):
                queue.unlink()
                queue.close()
            else:
                queue.remove()  # type: ignore[attr-defined]


def targets_for(contenders: list[h.Contender]) -> list[h.Target]:
    """The ratios the issues name (5, and "Speed" for the System V ones)."""
    tput, rtt = h.Workload("throughput", 64), h.Workload("latency", 64)
    wanted: list[h.TargetSpec] = []
    for loop in ("asyncio", "uvloop"):
        ours = f"aioipc@{loop}"
        name = f"aioipc/posix_ipc 64 B msgs/s, {loop}"
        wanted.append((name, ours, "posix_ipc", tput, "msgs_per_s", ">=", 0.9))
        name = f"aioipc/add_reader 64 B RTT p50, {loop}"
        wanted.append((name, ours, f"add_reader@{loop}", rtt, "p50_us", "<=", 1.2))
        name = f"aioipc-sysv/sysv_ipc 64 B msgs/s, {loop}"
        wanted.append((name, f"aioipc-sysv@{loop}", "sysv_ipc", tput, "msgs_per_s", ">=", 0.9))
        name = f"aioipc-sysv/sysv_ipc 64 B RTT p50, {loop}"
        wanted.append((name, f"aioipc-sysv@{loop}", "sysv_ipc", rtt, "p50_us", "<=", 2.0))
    return h.targets(contenders, wanted)


def main(argv: list[str] | None = None) -> bool:
    """Run the queue benchmarks, print the table and the ratios; True when every target is met."""
    args = h.parse_args(__doc__.splitlines()[0], argv)
    contenders = h.pick_contenders(args, LABELS, asynchronous=ASYNC)
    workloads = h.make_workloads(args, [64], lambda size: 200_000, ordered=False)
    return h.report("message queues", measure, contenders, workloads, args.runs, targets_for(contenders))


if __name__ == "__main__":
    h.script_main(ROLES, main)
