"""Request / response: JSON-RPC 2.0 over any aioipc address or message stream, or over NATS.

One message is one JSON-RPC object, so any JSON-RPC 2.0 peer in any
language can call an aioipc service, and an aioipc client can call it::

    class Math:
        async def add(self, a: int, b: int) -> int:
            return a + b

    async with await aioipc.rpc.serve("unix:/run/math.sock", Math()):
        async with await aioipc.rpc.connect("unix:/run/math.sock") as client:
            assert await client.call("add", 1, 2, timeout=5) == 3
            assert await client.call("add", a=1, b=2) == 3

The same code runs across machines with a ``nats://host:port/SUBJECT``
address (extra ``nats``): servers of one subject share its requests.

What the server answers, as the JSON-RPC 2.0 specification says:

=========  =================================================================
-32700     the message is not valid JSON (or not valid for the codec)
-32600     not a Request object: ``"jsonrpc"`` other than ``"2.0"``, no string
           ``method``, ``params`` neither array nor object, a bad ``id`` type
           (answered with the request's id when it has a valid one, else null)
-32601     no such method
-32602     the params do not fit the method's signature
-32603     the method raised (``data``: ``{"type": ..., "message": ...}``); a
           method that raises :class:`RemoteError` answers with its code instead
=========  =================================================================

Batches are supported: an array of requests is answered by one array of
responses (their methods run concurrently), or by nothing when it holds
only notifications. Notifications never get a response, not even an error.
"""

from __future__ import annotations

import functools
from typing import Any

from .._core.framing import DEFAULT_MAX_SIZE
from .._core.objects import Codec
from .._core.schemes import connect as _connect
from .._core.schemes import serve as _serve
from .._core.server import Server
from ._nats import NatsClient, is_nats_address, nats_client, serve_nats
from ._protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    Dispatcher,
    Handlers,
    RemoteError,
)
from ._stream import DEFAULT_MAX_CONCURRENCY, Client, serve_connection

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Client",
    "NatsClient",
    "RemoteError",
    "connect",
    "serve",
    "serve_stream",
]


async def serve_stream(
    msgs: Any,
    handlers: Handlers,
    *,
    codec: str | Codec = "json",
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
) -> None:
    """Answer JSON-RPC requests arriving on the message stream ``msgs``; return when it ends.

    Args:
        msgs: any message stream: a connection, ``proc.channel`` of
            :func:`aioipc.spawn`, a ring, a seqpacket socket.
        handlers: ``{"name": fn}`` (async or plain callables), or an object
            whose public ``async def`` methods are the methods.
        codec: ``"json"`` (default), ``"msgpack"`` (extra ``msgpack``), or a codec object.
        max_concurrency: requests of this stream handled at once; the next
            message is read only when one finishes.

    Raises:
        FrameTooLarge, ProtocolError: the stream itself broke (an oversize
            frame); what is running is cancelled. A message that is not
            JSON-RPC is answered with an error and does not raise.
        TypeError: ``handlers`` has no methods, or a value is not callable.

    Caveats:
        When the peer closes its sending side, requests already running
        are still answered before this returns; the stream is not closed.
        Cancelled (a server closing, ``idle_timeout``), it cancels the
        methods still running and waits for them to end, so that their
        cleanup (``finally: await ...``) is done when it returns; a method
        still running after 5 seconds (it ignored the cancellation) is
        left running, and a warning is logged.

    Example::

        channel = await aioipc.parent_channel()
        await aioipc.rpc.serve_stream(channel, {"add": add})
    """
    await serve_connection(msgs, Dispatcher(handlers, codec), max_concurrency)


async def serve(
    address: str,
    handlers: Handlers,
    *,
    codec: str | Codec = "json",
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    framing: Any = "length",
    max_size: int = DEFAULT_MAX_SIZE,
    **options: Any,
) -> Server:
    """Serve ``handlers`` at ``address``; serving when this returns, like :func:`aioipc.serve`.

    Args:
        address: any connection-oriented address (``unix:/path``,
            ``unix:@name``, ``tcp:host:port``, ``unix+seqpacket:/path``), or
            ``nats://host:port/SUBJECT`` (extra ``nats``).
        handlers: see :func:`serve_stream`.
        codec: ``"json"`` (default) or ``"msgpack"`` for aioipc clients only.
        max_concurrency: requests handled at once per connection (over
            NATS: per server).
        framing: ``"length"`` (default: 4-byte length prefix) or ``"lines"``
            for newline-delimited JSON peers (``socat``, shell scripts).
        max_size: the largest message; a larger frame ends that connection only.
        options: passed to :func:`aioipc.serve` (``mode``, ``max_connections`` ...), or
            for NATS to ``nats.connect()``, plus ``queue`` (the queue group; default
            the subject).

    Raises:
        ValueError: a bad address; AddressInUse: a live server owns it.
        ImportError: a ``nats://`` address without the extra ``nats``.
        OSError: the NATS server cannot be reached.

    Caveats:
        Closing the server (or ``idle_timeout`` closing a connection)
        cancels the methods running there and waits for their cleanup, as
        :func:`serve_stream` says.

    Example::

        async with await aioipc.rpc.serve("tcp:127.0.0.1:7000", {"add": add}) as server:
            await server.serve_forever()
    """
    dispatcher = Dispatcher(handlers, codec)
    if is_nats_address(address):
        return await serve_nats(address, dispatcher, max_concurrency, **options)
    handler = functools.partial(serve_connection, dispatcher=dispatcher, max_concurrency=max_concurrency)
    return await _serve(address, handler, framing=framing, max_size=max_size, **options)


async def connect(
    address: str,
    *,
    codec: str | Codec = "json",
    framing: Any = "length",
    max_size: int = DEFAULT_MAX_SIZE,
    **options: Any,
) -> Client | NatsClient:
    """A client for the JSON-RPC server at ``address``; ``async with`` closes it.

    Args:
        address: as for :func:`serve`.
        codec, framing, max_size: as the server uses them.
        options: passed to :func:`aioipc.connect` (``timeout`` ...), or to
            ``nats.connect()`` for a ``nats://`` address (``allow_reconnect``
            is off unless given: a lost NATS server fails calls at once).

    Raises:
        OSError: nobody listens there (``ConnectionRefusedError``, ``FileNotFoundError``).
        ImportError: a ``nats://`` address without the extra ``nats``.

    Example::

        async with await aioipc.rpc.connect("unix:/run/math.sock") as client:
            await client.call("add", 1, 2, timeout=5)
            await client.notify("log", "hi")
    """
    if is_nats_address(address):
        return await nats_client(address, codec, **options)
    msgs = await _connect(address, framing=framing, max_size=max_size, **options)
    return Client(msgs, codec=codec)
