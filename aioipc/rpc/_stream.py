"""JSON-RPC over one message stream: :class:`Client`, and the serving loop of one connection.

Serving one connection, the states of a request: *read* (the loop
received it, holding one of ``max_concurrency`` slots), *running* (its own
task), *answered* (the response sent under the connection's send lock).
Rule 1: the loop reads the next message only when a slot is free, so a
peer that floods the connection is slowed, never buffered without bound.
Rule 2: the peer's end (EOF) stops reading; what is running still gets
answered; then the loop returns. A broken or closed stream ends it at once.
Rule 3: an oversize or malformed frame ends this connection only (the
exception propagates to whoever serves it, which logs it); a message that
is not JSON-RPC is answered with an error and the connection goes on.

The client: one reader task per connection hands responses to the
pending calls (see ``_protocol.Caller``), started with the first call.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

import anyio

from .._core.objects import Codec
from ._protocol import Caller, Dispatcher

__all__ = ["DEFAULT_MAX_CONCURRENCY", "Client", "serve_connection"]

logger = logging.getLogger("aioipc")

DEFAULT_MAX_CONCURRENCY = 64
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def serve_connection(msgs: Any, dispatcher: Dispatcher, max_concurrency: int) -> None:
    """Answer the requests arriving on ``msgs`` until it ends (see the module docstring)."""
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
    slots = asyncio.Semaphore(max_concurrency)
    send_lock = asyncio.Lock()
    running: set[asyncio.Task[None]] = set()
    handle = dispatcher.handle
    loop = asyncio.get_running_loop()

    async def answer(data: bytes) -> None:
        try:
            reply = await handle(data)
            if reply is not None:
                async with send_lock:
                    await msgs.send(reply)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the peer is gone: the reading loop sees it too
        except Exception:
            logger.exception("rpc: cannot send a response")
        finally:
            slots.release()

    try:
        while True:
            await slots.acquire()
            try:
                data = await msgs.receive()
            except BaseException as exc:
                slots.release()
                if isinstance(exc, _GONE):
                    break
                raise
            task = loop.create_task(answer(data))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.wait(set(running))
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(set(running))


class Client(Caller):
    """Calls JSON-RPC methods over a message stream: many calls in flight, answered in any order.

    Args:
        msgs: a message stream to a JSON-RPC server (a connection, a spawn
            channel, a ring); the client owns it and closes it on ``aclose()``.
        codec: ``"json"`` (default; any JSON-RPC peer), ``"msgpack"`` (extra
            ``msgpack``; both sides must use it), or a codec object.

    Raises:
        see :meth:`call`.

    Caveats:
        A method that takes a keyword parameter named ``timeout`` cannot get
        it through ``call()``'s keywords: ``timeout`` is the call's own.

    Example::

        async with aioipc.rpc.Client(proc.channel) as client:
            print(await client.call("add", 1, 2))
    """

    def __init__(self, msgs: Any, *, codec: str | Codec = "json") -> None:
        super().__init__(codec, peer=repr(msgs))
        self.stream = msgs
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} over {self._peer} pending={len(self._pending)}>"

    async def _send(self, data: bytes, request_id: int | None) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        async with self._send_lock:
            await self.stream.send(data)

    async def _read(self) -> None:
        deliver = self._deliver
        try:
            async for data in self.stream:
                deliver(data)
            lost: BaseException = anyio.BrokenResourceError(f"the rpc server closed {self._peer}")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            lost = exc
        except Exception as exc:  # an oversize or malformed frame: this connection is over
            logger.error("rpc: the connection %s is broken: %s", self._peer, exc)
            lost = exc
        self._fail_all(lost)

    async def aclose(self) -> None:
        """Close the stream; pending calls raise ``anyio.ClosedResourceError``. Idempotent."""
        self._fail_all(anyio.ClosedResourceError())
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})
        await self.stream.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
