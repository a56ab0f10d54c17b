"""Publish / subscribe: one publisher, any number of subscribers, NATS subject rules everywhere.

A publisher binds an address; subscribers connect and say which subjects
they want; the publisher sends each one only what it asked for::

    async with await aioipc.pubsub.publisher("unix:/run/events.sock") as pub:
        await pub.publish("orders.created", b"...")

    async with await aioipc.pubsub.subscribe("unix:/run/events.sock", "orders.>") as sub:
        async for subject, payload in sub:
            ...

Subjects are ``.``-separated tokens (``orders.eu.created``); a pattern may
use ``*`` for exactly one token and ``>`` (last) for one or more.

A slow subscriber never blocks the publisher: each has a bounded queue in
the publisher (``queue_size`` messages); when it is full the oldest message
is dropped and counted, and ``sub.dropped`` tells the subscriber how many
it missed. ``policy="disconnect"`` drops the slow subscriber's connection
instead, ``policy="block"`` makes ``publish()`` wait for it. A subscriber
that vanishes or sends garbage ends only its own connection (logged on the
``aioipc`` logger).

Addresses: ``unix:/path``, ``unix:@name``, ``tcp:host:port``, and
``nats://host:port``, which publishes and subscribes through a NATS server
(extra ``nats``), so that the same code spans machines.

Not ``shm:``: aioipc's ring is one producer and one consumer each way.
Broadcast in shared memory needs a different ring (one writer, a cursor per
reader, readers that detect being overrun), and it cannot filter: every
reader maps every message, so "the publisher sends each subscriber only what
it asked for" would not hold. Use ``unix:`` on one machine.

Wire format (``unix:``, ``tcp:``), so that any language can take part. Every
frame is aioipc's length prefix (4-byte big-endian length, then that many
bytes), and its first byte says what it is:

=============  ==========================================================
subscriber →   ``P`` *policy*: ``drop_oldest``, ``disconnect`` or
publisher      ``block`` for this subscriber (optional, before ``S``)
               ``S`` *patterns*: UTF-8, separated by one space; sent once
publisher →    ``A``: the subscription is in effect (the first frame; if
subscriber     it was dropped with old messages, the first ``D`` or ``M``
               stands for it)
               ``M`` *n* *subject* *payload*: *n* is the subject's length
               in bytes (2 bytes, big-endian), then the UTF-8 subject,
               the rest of the frame is the payload
               ``D`` *count*: 8 bytes, big-endian: that many more messages
               were dropped for this subscriber (sent before the next ``M``)
               ``E``: the publisher closed normally; end of stream follows
=============  ==========================================================

A subscriber frame is at most 64 KiB. Anything else from a subscriber
closes its connection. A connection that ends without ``E`` means the
publisher died or disconnected the subscriber (``BrokenResourceError``).

Over NATS, the NATS server does the routing: a message that matches two of
one subscription's patterns arrives once per pattern (NATS's rule), and
``policy="block"`` does not exist.
"""

from __future__ import annotations

from typing import Any

from .._core.framing import DEFAULT_MAX_SIZE
from ._base import POLICIES, Policy, Publisher, Subscription, check_policy
from ._local import LocalPublisher, open_publisher, open_subscription
from ._nats import NatsPublisher, is_nats, open_nats_publisher, open_nats_subscription
from ._subjects import check_pattern, check_subject, matches

__all__ = [
    "POLICIES",
    "LocalPublisher",
    "NatsPublisher",
    "Policy",
    "Publisher",
    "Subscription",
    "check_pattern",
    "check_subject",
    "is_nats",
    "matches",
    "publisher",
    "subscribe",
]


async def publisher(
    address: str,
    *,
    policy: Policy = "drop_oldest",
    queue_size: int = 1024,
    max_size: int = DEFAULT_MAX_SIZE,
    linger: float = 1.0,
    timeout: float | None = None,
    **options: Any,
) -> Publisher:
    """Bind a publisher at ``address`` (or connect to the NATS server at a ``nats://`` address).

    It accepts subscribers at once. ``await pub.publish(subject, payload)``
    sends to every subscriber with a matching pattern and returns without
    waiting for any (unless ``policy="block"``). A local publisher also has
    ``pub.subscribers`` (how many now), ``pub.dropped`` (in all) and
    ``await pub.wait_for_subscribers(n, timeout=None)``.

    Args:
        policy: what a full subscriber queue does: ``"drop_oldest"`` (drop
            and count the oldest), ``"disconnect"`` (close that subscriber's
            connection) or ``"block"`` (``publish()`` waits). A subscriber may
            ask for its own with ``subscribe(..., policy=)``.
        queue_size: messages queued per subscriber beyond what its socket
            buffer holds; memory is bounded by ``queue_size`` times the
            largest message, per subscriber.
        max_size: the largest frame (subject, payload and 3 bytes) sent.
        linger: seconds ``aclose()`` gives subscribers to take what is
            queued for them before their connections are cut.
        timeout: seconds to reach a NATS server.
        options: passed to :func:`aioipc.serve` (``mode=`` for a socket file ...).

    Raises:
        ValueError: an address that is not ``unix:``, ``tcp:`` or ``nats://``; a bad policy.
        AddressInUse, FileExistsError: a live publisher holds the address.
        ImportError: a ``nats://`` address without nats-py (extra ``nats``).
        IPCError: the NATS server cannot be reached.

    Caveats:
        ``publish()`` raises ``ValueError`` for a bad subject (empty tokens,
        wildcards, whitespace) and ``FrameTooLarge`` over ``max_size``.
        Over NATS, ``policy`` must stay ``"drop_oldest"``: the NATS server
        handles slow subscribers.

    Example::

        async with await aioipc.pubsub.publisher("unix:/run/events.sock") as pub:
            await pub.publish("orders.created", b'{"id": 1}')
    """
    check_policy(policy)
    if queue_size < 1:
        raise ValueError("queue_size must be at least 1")
    if is_nats(address):
        return await open_nats_publisher(address, policy, timeout)
    return await open_publisher(address, policy, queue_size, max_size, linger, options)


async def subscribe(
    address: str,
    *patterns: str,
    policy: Policy | None = None,
    queue_size: int = 1024,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout: float | None = None,
    **options: Any,
) -> Subscription:
    """Subscribe to ``patterns`` at the publisher bound at ``address`` (or through a NATS server).

    The subscription is in effect when this returns: whatever is published
    afterwards on a matching subject arrives. ``async for subject, payload in sub``
    ends when the publisher closes normally.

    Args:
        patterns: subject patterns (``orders.>``, ``*.created``, ``orders.eu.created``).
        policy: this subscriber's policy when it falls behind (default: the publisher's).
        queue_size: over NATS, the messages held for a slow reader (the
            local publisher has its own ``queue_size``).
        max_size: the largest message accepted.
        timeout: seconds to connect and have the subscription accepted.

    Raises:
        ValueError: no pattern, a bad pattern or policy, or an unsupported address.
        OSError: no publisher at the address (``FileNotFoundError``, ``ConnectionRefusedError``).
        TimeoutError: ``timeout`` ran out.
        ImportError: a ``nats://`` address without nats-py (extra ``nats``).
        IPCError: the NATS server cannot be reached.

    Caveats:
        ``receive()`` raises ``BrokenResourceError`` when the publisher or the
        NATS server died, or the publisher disconnected this subscriber
        (``policy="disconnect"``); ``sub.dropped`` counts what was dropped.

        Over NATS, delivery is at most once. The subscription is on the
        server when this returns, yet nats-server 2.9 can drop what a
        publisher connected *before* it publishes in the next moments (35 of
        800 tries with 2.9.10). aioipc's publisher makes one round trip to the
        server before its first message, which closes that window for the
        subscribers already there (0 of 800); one that subscribes after a
        publisher's first message can still miss what comes right after.

    Example::

        async with await aioipc.pubsub.subscribe("unix:/run/events.sock", "orders.>") as sub:
            async for subject, payload in sub:
                print(subject, payload, sub.dropped)
    """
    if queue_size < 1:
        raise ValueError("queue_size must be at least 1")
    if is_nats(address):
        return await open_nats_subscription(address, patterns, policy, queue_size, timeout)
    return await open_subscription(address, patterns, policy, max_size, timeout, options)
