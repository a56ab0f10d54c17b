"""Publish / subscribe through a NATS server (``nats://host:port``), with nats-py (extra ``nats``).

Rule 1: a lost connection is never retried. nats-py's reconnection is off,
so a server that dies closes the client at once, and the subscription
raises ``BrokenResourceError`` (never a silent end, never a hang).
Rule 2: nats-py hands each message to a callback that only appends it to
the subscription's own bounded queue; that queue, not nats-py's, drops
(and counts) what a slow reader did not take.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import anyio

from .._core.errors import IPCError
from .._core.nats import FirstRoundTrip, close_nats, import_nats, is_nats_address
from ._base import Policy, Publisher, Subscription, check_policy
from ._subjects import check_subject, pattern_matcher

__all__ = ["NatsPublisher", "NatsSubscription", "is_nats", "open_nats_publisher", "open_nats_subscription"]

is_nats = is_nats_address

DEFAULT_TIMEOUT = 10.0  # seconds for a connect or a round trip to the server when no timeout is given


async def _connect(url: str, timeout: float | None, on_closed: Any = None) -> Any:
    nats = import_nats()

    async def closed() -> None:
        if on_closed is not None:
            on_closed()

    errors: list[Exception] = []

    async def error(exc: Exception) -> None:
        errors[:] = [exc]  # kept to explain a failed connect; once connected, closed() reports

    try:
        return await nats.connect(
            url,
            allow_reconnect=False,
            max_reconnect_attempts=1,  # nats-py counts the first attempt too: two tries ...
            reconnect_time_wait=0.1,  # ... 0.1 s apart, then NoServersError
            connect_timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            closed_cb=closed,
            error_cb=error,
            name="aioipc",
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        why = errors[-1] if errors else exc
        raise IPCError(f"cannot reach the NATS server at {url}: {why or type(why).__name__}") from exc


class NatsSubscription(Subscription):
    """A subscription through a NATS server; see :func:`aioipc.pubsub.subscribe`."""

    def __init__(self, url: str, patterns: tuple[str, ...], policy: Policy, queue_size: int) -> None:
        self.patterns = patterns
        self.dropped = 0
        self._url = url
        self._policy = policy
        self._queue_size = queue_size
        self._queue: deque[tuple[str, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._url} {' '.join(self.patterns)} dropped={self.dropped}>"

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _on_closed(self) -> None:
        self._fail(anyio.BrokenResourceError(f"the connection to the NATS server at {self._url} was lost"))

    async def _on_message(self, msg: Any) -> None:
        queue = self._queue
        if len(queue) >= self._queue_size:
            if self._policy == "disconnect":
                self._fail(anyio.BrokenResourceError("this subscriber fell behind (policy='disconnect')"))
                return
            queue.popleft()
            self.dropped += 1
        queue.append((msg.subject, msg.data))
        self._wake()

    async def receive(self) -> tuple[str, bytes]:
        while not self._queue:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.popleft()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._fail(anyio.ClosedResourceError())
        await close_nats(client)


async def open_nats_subscription(
    url: str, patterns: tuple[str, ...], policy: Policy | None, queue_size: int, timeout: float | None
) -> NatsSubscription:
    checked, _ = pattern_matcher(patterns)
    policy = check_policy(policy or "drop_oldest")
    if policy == "block":
        raise ValueError("over NATS no subscriber can make the publisher wait: policy='block' is local")
    sub = NatsSubscription(url, checked, policy, queue_size)
    sub._client = await _connect(url, timeout, sub._on_closed)
    try:
        for pattern in checked:
            await sub._client.subscribe(pattern, cb=sub._on_message)
        # a round trip: the server has the subscriptions when this returns
        await sub._client.flush(timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    except BaseException:
        await sub.aclose()
        raise
    return sub


class NatsPublisher(Publisher):
    """A publisher through a NATS server; see :func:`aioipc.pubsub.publisher`."""

    def __init__(self, url: str, client: Any) -> None:
        self.address = url
        self._client = client
        self._first = FirstRoundTrip()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"

    async def publish(self, subject: str, payload: bytes | bytearray | memoryview) -> None:
        check_subject(subject)
        if self._client.is_closed:
            raise anyio.ClosedResourceError
        try:
            if self._first.due:
                await self._first.make(self._client, DEFAULT_TIMEOUT)
            await self._client.publish(subject, bytes(payload))
        except (import_nats().errors.ConnectionClosedError, import_nats().errors.TimeoutError) as exc:
            raise anyio.BrokenResourceError(f"the connection to {self.address} was lost") from exc

    async def aclose(self) -> None:
        """Send what is buffered, then close the connection; idempotent."""
        client = self._client
        if client.is_closed:
            return
        try:
            await client.flush(timeout=DEFAULT_TIMEOUT)
        except (TimeoutError, import_nats().errors.Error):
            pass  # the server is gone: nothing more can be delivered
        finally:
            await close_nats(client)


async def open_nats_publisher(url: str, policy: Policy, timeout: float | None) -> NatsPublisher:
    if check_policy(policy) != "drop_oldest":
        raise ValueError("over NATS the server handles slow subscribers: give policy= to subscribe() instead")
    return NatsPublisher(url, await _connect(url, timeout))
