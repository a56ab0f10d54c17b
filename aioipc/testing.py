"""A conformance suite that every aioipc transport runs, and that yours can too.

Each check takes a *maker*: a zero-argument callable returning an async
context manager that yields a fresh ``(sender, receiver)`` pair and cleans
up whatever it created on exit. For two-way transports, pass
``two_way=True``: both streams then send and receive, and the suite also
checks half-close (``send_eof``).

Example::

    from contextlib import asynccontextmanager
    import aioipc, aioipc.testing

    @asynccontextmanager
    async def pipe_pair():
        r, w = aioipc.pipe()
        async with w, r:
            yield w, r

    async def test_pipes() -> None:
        await aioipc.testing.check_byte_stream(pipe_pair)

Every wait in the suite is bounded (``timeout`` seconds per check).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import KW_ONLY, dataclass
from typing import Any

import anyio

from ._core.streams import FAIR_OPS

__all__ = [
    "Fairness",
    "PairMaker",
    "check_byte_stream",
    "check_message_stream",
    "measure_fairness",
    "wait_until_idle",
]

PairMaker = Callable[[], AbstractAsyncContextManager[tuple[Any, Any]]]


async def wait_until_idle(progress: Callable[[], object] = lambda: None, rounds: int = 20) -> None:
    """Yield to the loop until ``progress()`` has not changed for ``rounds`` iterations in a row."""
    last, same = progress(), 0
    while same < rounds:
        await asyncio.sleep(0)
        now = progress()
        same = same + 1 if now == last else 0
        last = now


@dataclass
class Fairness:
    """What :func:`measure_fairness` saw: ``received`` messages in ``cpu`` seconds of this
    thread's CPU time, ``turns`` of the ticker task, and the ``longest`` it waited for one
    (in CPU time: the work the loop did meanwhile, not the machine's other load)."""

    received: int
    turns: int
    cpu: float
    longest: float

    @property
    def turns_per_10k(self) -> float:
        """The ticker's turns per 10,000 receives."""
        return 10_000 * self.turns / max(self.received, 1)


async def measure_fairness(
    receive: Callable[[], Awaitable[object]], seconds: float = 0.3, *, count: int | None = None
) -> Fairness:
    """Call ``receive()`` for ``seconds`` (a stream another process floods) with a ticker task beside it.

    With ``count``, call it exactly ``count`` times instead, however long that
    takes: the measure a busy machine does not change (a slower flood, not
    fewer operations).

    Example::

        seen = await aioipc.testing.measure_fairness(stream.receive)
        assert seen.longest < 0.05, "the flooded stream kept the loop for 50 ms"
    """
    loop = asyncio.get_running_loop()
    longest, turns, received = 0.0, 0, 0
    last = time.thread_time()

    async def ticker() -> None:
        nonlocal longest, turns, last
        last = time.thread_time()
        while True:
            await asyncio.sleep(0)
            now = time.thread_time()
            longest = max(longest, now - last)
            last = now
            turns += 1

    start = time.thread_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await asyncio.sleep(0)
        end = loop.time() + seconds
        while received < count if count is not None else loop.time() < end:
            await receive()
            received += 1
        longest = max(longest, time.thread_time() - last)  # a ticker that never got its turn waited all along
        tg.cancel_scope.cancel()
    return Fairness(received, turns, time.thread_time() - start, longest)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


async def _parked(task: asyncio.Task[Any]) -> None:
    await wait_until_idle()
    assert not task.done(), "expected the task to be waiting"


async def _collect_bytes(receiver: Any, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = await receiver.receive()
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def _drain_bytes(receiver: Any) -> bytes:
    chunks = []
    try:
        while True:
            chunks.append(await receiver.receive())
    except anyio.EndOfStream:
        return b"".join(chunks)


async def _drain_messages(receiver: Any) -> list[bytes]:
    return [message async for message in receiver]


@dataclass
class _Checks:
    maker: PairMaker
    _: KW_ONLY
    messages: bool
    two_way: bool
    clog_bytes: int
    timeout: float
    large_size: int = 1024 * 1024
    has_eof: bool = True
    is_reliable: bool = True
    peer_close: bool = True

    async def run(self) -> None:
        checks: list[Callable[[Any, Any], Awaitable[None]]] = [
            self.round_trip,
            self.many_small,
            self.large,
            self.eof,
            self.busy_receive,
            self.cancelled_receive_loses_nothing,
            self.close_wakes_receiver,
            self.use_after_close,
            self.backpressure,
            self.cancelled_send_is_whole,
            self.fair_to_others,
            self.broken_peer,
        ]
        if self.two_way:
            checks.append(self.half_close)
        if not self.has_eof:
            checks = [c for c in checks if c not in (self.eof, self.half_close, self.cancelled_send_is_whole)]
        if not self.peer_close:
            checks.remove(self.broken_peer)
        if not self.is_reliable:
            checks = [
                c
                for c in checks
                if c
                not in (self.many_small, self.backpressure, self.cancelled_send_is_whole, self.fair_to_others)
            ]
        for check in checks:
            directions = [False, True] if self.two_way and check != self.half_close else [False]
            for reverse in directions:
                async with self.maker() as (a, b):
                    sender, receiver = (b, a) if reverse else (a, b)
                    try:
                        with anyio.fail_after(self.timeout):
                            await check(sender, receiver)
                    except Exception as exc:
                        exc.add_note(f"conformance check {check.__name__} (reverse={reverse}) failed")
                        raise

    # -- helpers that work for both kinds -------------------------------------------------

    async def receive_payload(self, receiver: Any, size: int) -> bytes:
        if self.messages:
            return bytes(await receiver.receive())
        return await _collect_bytes(receiver, size)

    async def drain(self, receiver: Any) -> bytes | list[bytes]:
        return await (_drain_messages(receiver) if self.messages else _drain_bytes(receiver))

    # -- the checks -----------------------------------------------------------------------

    async def round_trip(self, sender: Any, receiver: Any) -> None:
        await sender.send(b"hello")
        assert await self.receive_payload(receiver, 5) == b"hello"
        if self.messages:
            await sender.send(b"")
            assert await receiver.receive() == b"", "an empty message must arrive as one"

    async def many_small(self, sender: Any, receiver: Any) -> None:
        items = [b"%05d" % i for i in range(2000)]

        async def produce() -> None:
            for item in items:
                await sender.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            if self.messages:
                got = [await receiver.receive() for _ in items]
                assert got == items, "messages must arrive whole and in order"
            else:
                assert await _collect_bytes(receiver, 5 * len(items)) == b"".join(items)

    async def large(self, sender: Any, receiver: Any) -> None:
        payload = os.urandom(self.large_size)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender.send, payload)
            assert await self.receive_payload(receiver, len(payload)) == payload

    async def eof(self, sender: Any, receiver: Any) -> None:
        await sender.send(b"last")
        await sender.aclose()
        rest = await self.drain(receiver)
        assert rest == ([b"last"] if self.messages else b"last")
        with _raises(anyio.EndOfStream):
            await receiver.receive()

    async def busy_receive(self, sender: Any, receiver: Any) -> None:
        first = asyncio.ensure_future(receiver.receive())
        await _parked(first)
        with _raises(anyio.BusyResourceError):
            await receiver.receive()
        await sender.send(b"x")
        assert bytes(await first) == b"x"

    async def cancelled_receive_loses_nothing(self, sender: Any, receiver: Any) -> None:
        for round_ in range(3):
            task = asyncio.ensure_future(receiver.receive())
            await _parked(task)
            task.cancel()
            with _raises(asyncio.CancelledError):
                await task
            await sender.send(b"msg%d" % round_)
            assert await self.receive_payload(receiver, 4) == b"msg%d" % round_

    async def close_wakes_receiver(self, sender: Any, receiver: Any) -> None:
        task = asyncio.ensure_future(receiver.receive())
        await _parked(task)
        await receiver.aclose()
        with _raises(anyio.ClosedResourceError):
            await task

    async def use_after_close(self, sender: Any, receiver: Any) -> None:
        await receiver.aclose()
        await receiver.aclose()
        with _raises(anyio.ClosedResourceError):
            await receiver.receive()
        await sender.aclose()
        await sender.aclose()
        with _raises(anyio.ClosedResourceError):
            await sender.send(b"x")

    async def _clog(self, sender: Any) -> tuple[asyncio.Task[None], list[int]]:
        """Send until the peer's buffers are full and the sender waits."""
        sent = [0]
        chunk = b"\x01" * 1000 if self.messages else b"\x01" * 65536

        async def produce() -> None:
            while sent[0] < self.clog_bytes:
                await sender.send(chunk)
                sent[0] += len(chunk)

        task = asyncio.ensure_future(produce())
        await wait_until_idle(lambda: sent[0])
        assert not task.done(), (
            f"sender never waited after {sent[0]} bytes with nobody reading: no backpressure"
        )
        return task, sent

    async def backpressure(self, sender: Any, receiver: Any) -> None:
        task, sent = await self._clog(sender)
        with _raises(anyio.BusyResourceError):
            await sender.send(b"y")
        # Everything the producer sends in all (a message may be received
        # before the send() that sent it has returned, so count up to this).
        chunk = 1000 if self.messages else 65536
        total = -(-self.clog_bytes // chunk) * chunk
        received = 0
        while received < total:
            received += len(await receiver.receive())
        await task
        assert received == sent[0] >= self.clog_bytes

    async def cancelled_send_is_whole(self, sender: Any, receiver: Any) -> None:
        task, _ = await self._clog(sender)
        task.cancel()
        with _raises(asyncio.CancelledError):
            await task
        drained: list[bytes | list[bytes]] = []

        async def drain() -> None:
            drained.append(await self.drain(receiver))

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await sender.send(b"\x02" * 10)
            await sender.aclose()
        rest = drained[0]
        if self.messages:
            assert isinstance(rest, list)
            assert all(m == b"\x01" * 1000 for m in rest[:-1]), "a cancelled send left a torn message"
            assert rest[-1] == b"\x02" * 10
        else:
            assert isinstance(rest, bytes)
            assert rest.endswith(b"\x02" * 10)
            assert len(rest.rstrip(b"\x02")) % 65536 == 0, "a cancelled send left half a chunk"

    async def fair_to_others(self, sender: Any, receiver: Any) -> None:
        """A ticker task keeps running while sends never wait and receives always find data."""
        count, item = 4 * FAIR_OPS, b"f" * 16
        ticks = [0]
        got: list[int] = []

        async def ticker() -> None:
            while True:
                ticks[0] += 1
                await asyncio.sleep(0)

        async def consume() -> None:
            before = ticks[0]
            if self.messages:
                for _ in range(count):
                    assert await receiver.receive() == item
            else:
                size = 0
                while size < count * len(item):
                    size += len(await receiver.receive(len(item)))
            got.append(ticks[0] - before)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await asyncio.sleep(0)
            tg.start_soon(consume)
            before = ticks[0]
            for _ in range(count):
                await sender.send(item)
            assert ticks[0] > before, f"{count} sends that never waited let no other task run"
            await _until(lambda: bool(got))
            assert got[0] > 0, f"{count} receives that always found data let no other task run"
            tg.cancel_scope.cancel()

    async def broken_peer(self, sender: Any, receiver: Any) -> None:
        await receiver.aclose()
        with _raises(anyio.BrokenResourceError):
            for _ in range(1000):
                await sender.send(b"into the void")
                await asyncio.sleep(0)

    async def half_close(self, a: Any, b: Any) -> None:
        await a.send(b"ping")
        await a.send_eof()
        assert await self.drain(b) == ([b"ping"] if self.messages else b"ping")
        await b.send(b"pong")
        assert await self.receive_payload(a, 4) == b"pong"


class _raises:
    def __init__(self, expected: type[BaseException]) -> None:
        self.expected = expected

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc_type is None:
            raise AssertionError(f"expected {self.expected.__name__}, nothing was raised")
        return issubclass(exc_type, self.expected)


async def check_byte_stream(
    maker: PairMaker, *, two_way: bool = False, clog_bytes: int = 8 * 2**20, timeout: float = 20
) -> None:
    """Check a byte transport: round trips, 1 MiB payloads, order, EOF, half-close,
    ``BusyResourceError``, cancellation, close while waiting, backpressure with a
    clogged peer, cancelled sends, fairness (a ticker task keeps running while
    the stream is flooded), a peer that closed, double ``aclose()``.

    Raises:
        AssertionError: with a note naming the failed check.
    """
    await _Checks(maker, messages=False, two_way=two_way, clog_bytes=clog_bytes, timeout=timeout).run()


async def check_message_stream(
    maker: PairMaker,
    *,
    two_way: bool = False,
    clog_bytes: int = 8 * 2**20,
    timeout: float = 20,
    large_size: int = 1024 * 1024,
    eof: bool = True,
    reliable: bool = True,
    peer_close: bool = True,
) -> None:
    """Check a message transport: the byte checks, plus empty messages and boundaries.

    Args:
        large_size: the payload of the large-message check: the largest
            message the transport carries if that is under 1 MiB (a datagram
            socket's limit is its ``SO_SNDBUF``).
        eof: ``False`` for a transport whose receiver never learns that the
            sender closed (datagram sockets): skips the checks that need
            ``EndOfStream`` (eof, half-close, cancelled send).
        reliable: ``False`` for a transport that may drop messages and has no
            backpressure (UDP): skips many-small, backpressure, cancelled send
            and fairness.
        peer_close: ``False`` for a transport whose sender is never told that
            the receiver closed (message queues: the queue outlives both
            handles): skips broken-peer.

    Raises:
        AssertionError: with a note naming the failed check.
    """
    await _Checks(
        maker,
        messages=True,
        two_way=two_way,
        clog_bytes=clog_bytes,
        timeout=timeout,
        large_size=large_size,
        has_eof=eof,
        is_reliable=reliable,
        peer_close=peer_close,
    ).run()
