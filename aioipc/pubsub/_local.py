"""Publish / subscribe over a stream socket (``unix:``, ``unix:@``, ``tcp:``): the publisher binds.

States of one subscriber, as the publisher keeps it: *connected* (no
``S`` frame yet: gets nothing), *subscribed* (gets what its patterns
match), *finishing* (the publisher closes: ``E`` is queued after what is
pending), *gone* (left, vanished, disconnected for being slow, or sent
garbage: removed, and nothing else notices).

Rule 1: ``publish()`` never waits for a subscriber (save ``policy="block"``):
it appends the message to each matching subscriber's queue (at most
``queue_size`` messages) and wakes that subscriber's writer task, which
sends what queued up as one write. The publisher yields to the loop every
``YIELD_EVERY`` messages, so a burst costs one write per subscriber.
Rule 2: a drop is counted when it happens and reported (a ``D`` frame) just
before the next message the writer sends. A queue that dropped is not
empty until that message went out, so a subscriber that read everything
has heard of every drop.
Rule 3: the ``A`` frame is queued in the same step that makes the
subscriber match messages, so it comes before any message. Should it be
dropped with the oldest messages, the first ``D`` or ``M`` frame stands for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.abc

from .._core.errors import FrameTooLarge, IPCError, ProtocolError
from .._core.framing import HEADER
from .._core.schemes import connect, parse_address, serve
from .._core.streams import FramedReceiveStream, framed
from ._base import Policy, Publisher, Subscription, check_policy
from ._subjects import check_subject, pattern_matcher

__all__ = ["LocalPublisher", "LocalSubscription", "open_publisher", "open_subscription"]

logger = logging.getLogger("aioipc")

Buffer = bytes | bytearray | memoryview
Parts = tuple[Buffer, ...]

SCHEMES = ("unix", "tcp")
CONTROL_MAX_SIZE = 64 * 1024  # the largest frame a subscriber may send (its patterns)
YIELD_EVERY = 256  # publish() lets the loop run (writers, flushes) once per this many messages
ROUTE_CACHE_SIZE = 4096  # subjects whose matching subscribers are remembered
BATCH_SIZE = 256 * 1024  # a subscriber's writer joins queued frames up to about this many bytes

_ACK: Parts = (HEADER.pack(1) + b"A",)
_END_FRAME = HEADER.pack(1) + b"E"
_END: Parts = (_END_FRAME,)
_DROPS_HEADER = HEADER.pack(9) + b"D"


def check_scheme(address: str) -> None:
    """Refuse an address whose scheme this publisher cannot bind.

    Raises:
        ValueError: not a ``unix:`` or ``tcp:`` address (``shm:`` included: see the module docs).
    """
    scheme = parse_address(address).scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"pubsub runs over unix:, unix:@, tcp: and nats:// addresses, not {scheme}: "
            "(shm: has no one-writer, many-reader ring: see aioipc.pubsub)"
        )


class _Subscriber:
    """One subscriber's connection, queue and counters, in the publisher."""

    __slots__ = (
        "_space",
        "_unreported",
        "_wake",
        "dropped",
        "gone",
        "patterns",
        "policy",
        "queue",
        "queue_size",
        "stream",
        "tasks",
        "wants",
    )

    def __init__(self, stream: anyio.abc.ByteStream, policy: Policy, queue_size: int) -> None:
        self.stream = stream
        self.policy = policy
        self.queue_size = queue_size
        self.queue: deque[Parts] = deque()
        self.patterns: tuple[str, ...] = ()
        self.wants: Callable[[str], bool] = lambda subject: False
        self.dropped = 0
        self.gone = False
        self.tasks: list[asyncio.Future[None]] = []
        self._unreported = 0
        self._wake: asyncio.Future[None] | None = None
        self._space: list[asyncio.Future[None]] = []

    def offer(self, parts: Parts) -> bool:
        """Queue ``parts`` (one frame); ``False`` means wait for room (policy "block")."""
        queue = self.queue
        if len(queue) < self.queue_size:
            if not self.gone:
                queue.append(parts)
                wake = self._wake
                if wake is not None and not wake.done():
                    wake.set_result(None)
            return True
        if self.gone:
            return True
        if self.policy == "drop_oldest":
            if queue.popleft() is not _ACK:
                self.dropped += 1
                self._unreported += 1
            queue.append(parts)
            return True
        if self.policy == "disconnect":
            logger.warning(
                "pubsub: a subscriber to %s fell %d messages behind; disconnected (policy='disconnect')",
                ", ".join(self.patterns),
                len(queue),
            )
            self.disconnect()
            return True
        return False

    async def wait_for_room(self) -> None:
        """Wait until the queue has room or the subscriber is gone (policy "block")."""
        while len(self.queue) >= self.queue_size and not self.gone:
            waiter = asyncio.get_running_loop().create_future()
            self._space.append(waiter)
            await waiter

    def finish(self) -> None:
        """Queue the end frame after everything pending, whatever the policy."""
        self.queue.append(_END)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def disconnect(self) -> None:
        self.gone = True
        self.queue.clear()
        self._wake_space()
        for task in self.tasks:
            task.cancel()

    def _wake_space(self) -> None:
        for waiter in self._space:
            if not waiter.done():
                waiter.set_result(None)
        self._space.clear()

    async def write_loop(self) -> None:
        """Drain the queue into the socket, a batch of frames per write, until the end frame went out."""
        queue = self.queue
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                self._wake = loop.create_future()
                await self._wake
                continue
            batch: list[Buffer] = []
            if self._unreported:  # Rule 2
                batch.append(_DROPS_HEADER + self._unreported.to_bytes(8, "big"))
                self._unreported = 0
            size = 0
            end = False
            while queue and size < BATCH_SIZE:
                parts = queue.popleft()
                if parts is _END:
                    end = True
                    break
                batch += parts
                size += len(parts[-1])
            if self._space:
                self._wake_space()
            if batch:
                await self.stream.send(b"".join(batch))
            if end:
                await self.stream.send(_END_FRAME)
                await self.stream.send_eof()
                return


class LocalPublisher(Publisher):
    """A publisher bound to a socket address; see :func:`aioipc.pubsub.publisher`."""

    def __init__(self, policy: Policy, queue_size: int, max_size: int, linger: float) -> None:
        self.address = ""
        self._policy = policy
        self._queue_size = queue_size
        self._max_size = max_size
        self._linger = linger
        self._server: Any = None
        self._connections: set[_Subscriber] = set()
        self._subscribed: list[_Subscriber] = []
        self._routes: dict[str, tuple[tuple[_Subscriber, ...], bytes]] = {}
        self._changed = asyncio.Event()
        self._since_yield = 0
        self._closing = False
        self._lost = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} subscribers={self.subscribers}>"

    @property
    def subscribers(self) -> int:
        """Subscribers whose subscription is in effect now."""
        return len(self._subscribed)

    @property
    def dropped(self) -> int:
        """Messages dropped so far, over every subscriber (those gone included)."""
        return self._lost + sum(s.dropped for s in self._subscribed)

    async def wait_for_subscribers(self, count: int, timeout: float | None = None) -> None:
        """Wait until at least ``count`` subscriptions are in effect.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        with anyio.fail_after(timeout):
            while len(self._subscribed) < count:
                self._changed.clear()
                await self._changed.wait()

    async def publish(self, subject: str, payload: Buffer) -> None:
        if self._closing:
            raise anyio.ClosedResourceError
        route = self._routes.get(subject)
        if route is None:
            route = self._route(subject)
        targets, prefix = route
        if targets:
            if type(payload) is not bytes:
                payload = bytes(payload)
            size = len(prefix) + len(payload)
            if size > self._max_size:
                raise FrameTooLarge(size, self._max_size)
            parts = (HEADER.pack(size) + prefix, payload)
            for sub in targets:
                if not sub.offer(parts):
                    while not sub.gone and not sub.offer(parts):
                        await sub.wait_for_room()
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await asyncio.sleep(0)

    def _route(self, subject: str) -> tuple[tuple[_Subscriber, ...], bytes]:
        encoded = check_subject(subject).encode()
        route = (
            tuple(sub for sub in self._subscribed if sub.wants(subject)),
            b"M" + len(encoded).to_bytes(2, "big") + encoded,
        )
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[subject] = route
        return route

    def _subscribe(self, sub: _Subscriber, patterns: Iterable[str]) -> None:
        sub.patterns, sub.wants = pattern_matcher(patterns)
        sub.offer(_ACK)  # Rule 3: before it can match anything
        self._subscribed.append(sub)
        self._routes.clear()
        self._changed.set()

    def _forget(self, sub: _Subscriber) -> None:
        self._connections.discard(sub)
        if sub in self._subscribed:
            self._subscribed.remove(sub)
            self._lost += sub.dropped
            self._routes.clear()
            self._changed.set()
        sub.disconnect()

    async def _read_control(self, sub: _Subscriber, msgs: Any) -> None:
        """Take the subscriber's ``P`` and ``S`` frames; return when it leaves."""
        async for frame in msgs:
            kind, body = frame[:1], frame[1:]
            if kind == b"P" and not sub.patterns:
                sub.policy = check_policy(body.decode())
            elif kind == b"S" and not sub.patterns:
                self._subscribe(sub, body.decode().split(" "))
            else:
                raise ProtocolError(f"unexpected frame from a subscriber: {bytes(frame[:32])!r}")

    async def serve_subscriber(self, stream: anyio.abc.ByteStream) -> None:
        """The handler of one subscriber's connection."""
        sub = _Subscriber(stream, self._policy, self._queue_size)
        if self._closing:
            return
        self._connections.add(sub)
        reader = asyncio.ensure_future(self._read_control(sub, framed(stream, max_size=CONTROL_MAX_SIZE)))
        writer = asyncio.ensure_future(sub.write_loop())
        sub.tasks += (reader, writer)
        try:
            done, _ = await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._forget(sub)
            await asyncio.gather(reader, writer, return_exceptions=True)
        for task in done:
            if task.cancelled():
                continue
            error = task.exception()
            if isinstance(error, IPCError | ValueError):
                logger.warning("pubsub: a subscriber sent garbage (%s); its connection is closed", error)
            elif error is not None and not isinstance(
                error, anyio.BrokenResourceError | anyio.ClosedResourceError | OSError
            ):
                raise error

    async def aclose(self) -> None:
        """Send every subscriber what is queued and an end frame, then close (after ``linger`` s at most).

        Idempotent.
        """
        if self._closing:
            if self._server is not None:
                await self._server.close()
            return
        self._closing = True
        for sub in list(self._connections):
            sub.finish()
        if self._server is not None:
            await self._server.close(grace=self._linger)


async def open_publisher(
    address: str, policy: Policy, queue_size: int, max_size: int, linger: float, options: dict[str, Any]
) -> LocalPublisher:
    check_scheme(address)
    publisher = LocalPublisher(policy, queue_size, max_size, linger)
    publisher._server = await serve(address, publisher.serve_subscriber, framing=None, **options)
    publisher.address = publisher._server.address
    return publisher


class LocalSubscription(Subscription):
    """A subscription to a socket publisher; see :func:`aioipc.pubsub.subscribe`."""

    def __init__(
        self, stream: anyio.abc.ByteStream, address: str, patterns: tuple[str, ...], max_size: int
    ) -> None:
        self.patterns = patterns
        self.dropped = 0
        self._stream = stream
        self._receive = FramedReceiveStream(stream, max_size).receive
        self._address = address
        self._first: bytes | None = None
        self._ended = False
        self._subjects: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._address} {' '.join(self.patterns)} dropped={self.dropped}>"

    async def _accept(self, hello: bytes) -> None:
        """Send the subscriber's frames; wait for the publisher's first frame (Rule 3)."""
        await self._stream.send(hello)
        try:
            first = await self._receive()
        except anyio.EndOfStream:
            raise ProtocolError(
                f"the publisher at {self._address} closed the connection before accepting the subscription"
            ) from None
        if first != b"A":
            self._first = first

    async def receive(self) -> tuple[str, bytes]:
        while True:
            if self._first is None:
                try:
                    frame = await self._receive()
                except anyio.EndOfStream:
                    if self._ended:
                        raise
                    raise anyio.BrokenResourceError(
                        f"the publisher at {self._address} went away without closing: it died, "
                        "or disconnected this subscriber for reading too slowly"
                    ) from None
            else:
                frame, self._first = self._first, None
            if frame[:1] == b"M" and len(frame) >= 3:
                end = 3 + ((frame[1] << 8) | frame[2])
                raw = frame[3:end]
                subject = self._subjects.get(raw)
                if subject is None:
                    subject = self._subject(raw)
                return subject, frame[end:]
            self._control(frame)

    def _subject(self, raw: bytes) -> str:
        subject = raw.decode()
        if len(self._subjects) >= ROUTE_CACHE_SIZE:
            self._subjects.clear()
        self._subjects[raw] = subject
        return subject

    def _control(self, frame: bytes) -> None:
        """Take a frame other than a message: count drops, or see the end."""
        if frame[:1] == b"D" and len(frame) == 9:
            self.dropped += int.from_bytes(frame[1:9], "big")
        elif frame == b"E":
            self._ended = True
            raise anyio.EndOfStream
        elif frame != b"A":
            raise ProtocolError(f"unexpected frame from the publisher at {self._address}: {frame[:32]!r}")

    async def aclose(self) -> None:
        await self._stream.aclose()


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


async def open_subscription(
    address: str,
    patterns: tuple[str, ...],
    policy: Policy | None,
    max_size: int,
    timeout: float | None,
    options: dict[str, Any],
) -> LocalSubscription:
    check_scheme(address)
    checked, _ = pattern_matcher(patterns)
    hello = b"S" + " ".join(checked).encode()
    if len(hello) > CONTROL_MAX_SIZE:
        raise ValueError(f"the patterns take more than {CONTROL_MAX_SIZE} bytes together")
    hello = _frame(hello) if policy is None else _frame(b"P" + check_policy(policy).encode()) + _frame(hello)
    with anyio.fail_after(timeout):
        stream = await connect(address, framing=None, timeout=timeout, **options)
        sub = LocalSubscription(stream, address, checked, max_size + 3 + 65535)
        try:
            await sub._accept(hello)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
    return sub
