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

The client has no reader task: the first caller that waits reads for
everyone (the *reader*), handing each response to its call (see
``_protocol.Caller``), until its own arrives; it then wakes one waiting
caller to read in its place. So a lone caller reads its own response with
no task switch, and a cancelled reader loses nothing (a cancelled
``receive()`` loses no message) and always hands over.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

import anyio

from .._core.errors import FrameTooLarge
from .._core.objects import Codec
from ._protocol import Caller, Dispatcher

__all__ = ["DEFAULT_MAX_CONCURRENCY", "Client", "serve_connection"]

logger = logging.getLogger("aioipc")

DEFAULT_MAX_CONCURRENCY = 64
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
_TAKE_OVER: Any = object()  # a waiting caller's "response": the reader left, read in its place


async def serve_connection(msgs: Any, dispatcher: Dispatcher, max_concurrency: int) -> None:
    """Answer the requests arriving on ``msgs`` until it ends (see the module docstring)."""
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
    send_lock = asyncio.Lock()
    running: set[asyncio.Task[None]] = set()
    handle, receive = dispatcher.handle, msgs.receive
    loop = asyncio.get_running_loop()
    slot_freed: asyncio.Future[None] | None = None  # the loop waits on it while every slot is taken
    if sys.version_info >= (3, 12):  # run each answer at once, up to its first wait: no extra loop turn

        def start(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
            return asyncio.Task(coro, loop=loop, eager_start=True)
    else:
        start = loop.create_task

    async def answer(data: bytes) -> None:
        try:
            reply = await handle(data)
            if reply is not None:
                await send_lock.acquire()
                try:
                    await msgs.send(reply)
                except FrameTooLarge as exc:  # a result over max_size: the caller gets an error
                    await msgs.send(dispatcher.undeliverable(dispatcher.codec.decode(reply), str(exc), exc))
                finally:
                    send_lock.release()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the peer is gone: the reading loop sees it too
        except Exception:
            logger.exception("rpc: cannot send a response")

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        if slot_freed is not None and not slot_freed.done():
            slot_freed.set_result(None)

    try:
        while True:
            while len(running) >= max_concurrency:  # Rule 1: a slot for the next message first
                slot_freed = loop.create_future()
                await slot_freed
            try:
                data = await receive()
            except _GONE:
                break
            task = start(answer(data))
            if not task.done():
                running.add(task)
                task.add_done_callback(finished)
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
        it through ``call()``'s keywords: ``timeout`` is the call's own. No
        task reads the stream while no call waits: a server that closes an
        idle connection is noticed by the next call.

    Example::

        async with aioipc.rpc.Client(proc.channel) as client:
            print(await client.call("add", 1, 2))
    """

    def __init__(self, msgs: Any, *, codec: str | Codec = "json") -> None:
        super().__init__(codec, peer=repr(msgs))
        self.stream = msgs
        self._send_lock = asyncio.Lock()
        self._reading = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} over {self._peer} pending={len(self._pending)}>"

    async def _send(self, data: bytes, request_id: int | None) -> None:
        lock = self._send_lock
        await lock.acquire()
        try:
            await self.stream.send(data)
        finally:
            lock.release()

    async def _response(self, request_id: int, future: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        while True:
            if future.done() and not future.cancelled() and future.result() is _TAKE_OVER:
                # told to read (perhaps while this call was still sending): its response comes
                # in the fresh future _hand_over put in _pending
                future = self._pending[request_id]
                continue
            if self._lost is not None and not future.done():
                raise self._lost_error()
            if not self._reading:
                return await self._read_until(request_id, future)
            try:
                response = await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled() and future.result() is _TAKE_OVER:
                    self._pending.pop(request_id, None)
                    self._hand_over()  # told to read, but cancelled first: tell another caller
                raise
            if response is not _TAKE_OVER:
                return response
            future = self._pending[request_id]  # put there by _hand_over; perhaps answered already

    async def _read_until(self, request_id: int, future: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        """Read for every caller, as the one reader, until ``future`` (ours) has its response."""
        self._reading = True
        receive, deliver = self.stream.receive, self._deliver
        try:
            while not future.done():
                try:
                    data = await receive()
                except anyio.EndOfStream:
                    self._fail_all(anyio.BrokenResourceError(f"the rpc server closed {self._peer}"))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                    self._fail_all(exc)
                except Exception as exc:  # an oversize or malformed frame: this connection is over
                    logger.error("rpc: the connection %s is broken: %s", self._peer, exc)
                    self._fail_all(exc)
                else:
                    deliver(data)
        finally:
            self._reading = False
            if not future.done():  # cancelled: this call is over, someone else must read
                self._pending.pop(request_id, None)
            self._hand_over()
        return future.result()

    def _hand_over(self) -> None:
        """The reader left: wake one waiting caller to read in its place.

        Its call gets a fresh future in ``_pending`` first, so that a response
        that a newer reader delivers meanwhile is kept for it.
        """
        if self._reading or self._lost is not None:
            return
        for request_id, future in self._pending.items():
            if not future.done():
                self._pending[request_id] = future.get_loop().create_future()
                future.set_result(_TAKE_OVER)
                return

    async def aclose(self) -> None:
        """Close the stream; pending calls raise ``anyio.ClosedResourceError``. Idempotent."""
        self._fail_all(anyio.ClosedResourceError())
        await self.stream.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
