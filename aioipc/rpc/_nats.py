"""JSON-RPC over NATS: the same payloads, carried by NATS request/reply (extra ``nats``).

An address is ``nats://host:port/SUBJECT``. A server subscribes to SUBJECT
in a queue group (by default named after the subject), so that every
server of one subject shares the requests. A client publishes each request
with a reply subject of its own (``INBOX.ID``, one wildcard subscription
per client) and matches the response by its JSON-RPC id.

Rule 1: a lost NATS connection fails every pending call at once
(``anyio.BrokenResourceError``); a client does not reconnect unless asked
(``allow_reconnect=True``), so no call waits on a server that is gone.
Rule 2: a request with no server on its subject fails at once with
``ConnectionRefusedError`` (the NATS "no responders" status), as a
connection to a socket nobody listens on does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import anyio

from .._core.nats import FirstRoundTrip, close_nats, import_nats, is_nats_address
from .._core.objects import Codec
from .._core.server import Server
from . import _stream
from ._protocol import Caller, Dispatcher

__all__ = ["NatsClient", "NatsServer", "is_nats_address", "nats_client", "serve_nats"]

logger = logging.getLogger("aioipc")

_NO_RESPONDERS = "503"


def _split(address: str) -> tuple[str, str]:
    """``nats://host:port/svc.math`` → (``nats://host:port``, ``svc.math``)."""
    parts = urlsplit(address)
    subject = parts.path.lstrip("/")
    if not parts.netloc or not subject or " " in subject or "/" in subject:
        raise ValueError(f"bad NATS rpc address {address!r}: expected nats://host:port/SUBJECT")
    return f"{parts.scheme}://{parts.netloc}", subject


async def _quiet(exc: Exception) -> None:
    logger.debug("nats: %s", exc)


class NatsClient(Caller):
    """Calls JSON-RPC methods on the servers of one NATS subject (see :func:`aioipc.rpc.connect`)."""

    def __init__(self, url: str, subject: str, codec: str | Codec) -> None:
        super().__init__(codec, peer=f"{url}/{subject}")
        self.subject = subject
        self._url = url
        self._nc: Any = None
        self._inbox = ""
        self._first = FirstRoundTrip()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._peer} pending={len(self._pending)}>"

    async def _start(self, **options: Any) -> None:
        options.setdefault("allow_reconnect", False)
        options.setdefault("error_cb", _quiet)
        self._nc = await import_nats().connect(
            self._url, disconnected_cb=self._disconnected, closed_cb=self._disconnected, **options
        )
        self._inbox = self._nc.new_inbox()
        await self._nc.subscribe(self._inbox + ".*", cb=self._on_reply)

    async def _disconnected(self) -> None:
        self._fail_all(anyio.BrokenResourceError(f"lost the connection to the NATS server {self._url}"))

    async def _on_reply(self, msg: Any) -> None:
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            token = msg.subject.rpartition(".")[2]
            if token.isdigit():
                self._fail(int(token), ConnectionRefusedError(f"no rpc server serves {self._peer}"))
            return
        self._deliver(msg.data)

    async def _send(self, data: bytes, request_id: int | None) -> None:
        reply = "" if request_id is None else f"{self._inbox}.{request_id}"
        errors = import_nats().errors
        try:
            if self._first.due:
                await self._first.make(self._nc)
            await self._nc.publish(self.subject, data, reply=reply)
        except (errors.ConnectionClosedError, errors.TimeoutError) as exc:
            raise anyio.BrokenResourceError(f"lost the connection to the NATS server {self._url}") from exc

    async def aclose(self) -> None:
        """Close the NATS connection; pending calls raise ``anyio.ClosedResourceError``. Idempotent."""
        self._fail_all(anyio.ClosedResourceError())
        await close_nats(self._nc)

    async def __aenter__(self) -> NatsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def nats_client(address: str, codec: str | Codec, **options: Any) -> NatsClient:
    url, subject = _split(address)
    client = NatsClient(url, subject, codec)
    await client._start(**options)
    return client


class NatsServer(Server):
    """A :class:`aioipc.Server` whose requests come from a NATS queue group.

    ``close(grace)`` unsubscribes, lets running requests finish for ``grace``
    seconds, cancels the rest and closes the NATS connection. When the NATS
    connection is lost for good, ``serve_forever()`` raises
    ``anyio.BrokenResourceError``.
    """

    def __init__(self, address: str, dispatcher: Dispatcher, max_concurrency: int) -> None:
        super().__init__(address, on_close=self._finish)
        self._dispatcher = dispatcher
        self._slots = asyncio.Semaphore(max_concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._nc: Any = None
        self._subscription: Any = None
        self._grace = 0.0
        self._lost: BaseException | None = None

    @property
    def connections(self) -> int:
        """Requests being answered now."""
        return len(self._running)

    async def _start(self, url: str, subject: str, queue: str, **options: Any) -> None:
        options.setdefault("error_cb", _quiet)
        self._nc = await import_nats().connect(url, closed_cb=self._connection_closed, **options)
        try:
            self._subscription = await self._nc.subscribe(subject, queue=queue, cb=self._on_request)
            await self._nc.flush()  # the server knows the subscription: serving from now on
        except BaseException:
            await close_nats(self._nc)
            raise
        self.run(self._accept)

    async def _accept(self, server: Server) -> None:
        """The server's body: requests arrive through the subscription until close() cancels this."""
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._unsubscribe()

    async def _connection_closed(self) -> None:
        if not self._closing:
            self._lost = anyio.BrokenResourceError(
                f"lost the connection to the NATS server of {self.address}"
            )
            await self.close()

    async def _on_request(self, msg: Any) -> None:
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, msg: Any) -> None:
        try:
            reply = await self._dispatcher.handle(msg.data)
            if reply is not None and msg.reply:
                try:
                    await self._nc.publish(msg.reply, reply)
                except Exception as exc:  # over the server's max_payload: the caller gets an error
                    if self._nc.is_closed:
                        raise
                    errors = self._dispatcher.undeliverable(
                        self._dispatcher.codec.decode(reply), str(exc), exc
                    )
                    await self._nc.publish(msg.reply, errors)
        except Exception as exc:
            logger.error("rpc: cannot answer a request on %s: %s", self.address, exc)
        finally:
            self._slots.release()

    async def _unsubscribe(self) -> None:
        if self._subscription is not None and not self._nc.is_closed:
            await self._subscription.unsubscribe()

    async def _finish(self) -> None:
        if self._running and self._grace > 0:
            await asyncio.wait(set(self._running), timeout=self._grace)
        for task in self._running:
            task.cancel()
        if self._running:  # their cleanup ends first (this runs shielded), within a bound
            await asyncio.wait(set(self._running), timeout=_stream.CLEANUP_TIMEOUT)
        if self._running:
            logger.warning(
                "rpc: %d method(s) on %s still running %g s after they were cancelled; left running",
                len(self._running),
                self.address,
                _stream.CLEANUP_TIMEOUT,
            )
        await close_nats(self._nc)

    async def close(self, grace: float = 0) -> None:
        self._grace = grace
        await super().close(grace)

    async def serve_forever(self) -> None:
        await super().serve_forever()
        if self._lost is not None:
            raise self._lost


async def serve_nats(
    address: str, dispatcher: Dispatcher, max_concurrency: int, queue: str | None = None, **options: Any
) -> NatsServer:
    url, subject = _split(address)
    server = NatsServer(address, dispatcher, max_concurrency)
    await server._start(url, subject, queue or subject, **options)
    return server
