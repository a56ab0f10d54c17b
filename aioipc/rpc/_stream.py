"""JSON-RPC over one message stream: :class:`Client`, and the serving loop of one connection.

Serving one connection, one task at a time is its *reader*: it receives a
request and runs its answer (the method, then the response sent) at once,
in a fresh copy of its context; a response ready while another answer is
sending joins that answer's outbox, which it sends before it ends. Most
answers finish without waiting: no task per request, no loop turn. An
answer that waits keeps the task it started in (a cancel scope or timeout
it entered there stays valid), which becomes its *host*, and a new task
becomes the reader. The task that serves the connection only waits for the
end, and cancels the others if it is cancelled.
Rule 1: the reader receives the next message only while fewer than
``max_concurrency`` answers wait or responses are queued, so a peer that
floods the connection (or reads no responses) is slowed, never buffered
without bound.
Rule 2: the peer's end (EOF) stops reading; what is running still gets
answered; then the serving returns. A broken or closed stream ends it at once.
Rule 3: an oversize or malformed frame ends this connection only (the
exception propagates to whoever serves it, which logs it, and what is
running is cancelled); a message that is not JSON-RPC is answered with an
error and the connection goes on. A reader that dies of anything else (a
method cancelled its task) ends the connection with a RuntimeError.
Rule 4: cancelled (a server closing, ``idle_timeout``), the serving task
cancels the reader and the hosts once and waits, shielded, for them to end
(their ``finally:`` blocks may await), ``CLEANUP_TIMEOUT`` seconds at most.

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
import types
from collections import deque
from collections.abc import Coroutine, Generator
from contextvars import Context, copy_context
from types import TracebackType
from typing import Any

import anyio

from .._core.errors import FrameTooLarge
from .._core.objects import Codec
from ._protocol import Caller, Dispatcher

__all__ = ["CLEANUP_TIMEOUT", "DEFAULT_MAX_CONCURRENCY", "Client", "serve_connection"]

logger = logging.getLogger("aioipc")

DEFAULT_MAX_CONCURRENCY = 64
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)
CLEANUP_TIMEOUT = 5.0
"""Seconds a cancelled connection waits for its methods to end (``finally:`` blocks that await).

A method that ignores its cancellation, or cleans up for longer, is left
running (and a warning is logged): closing a server never hangs on it."""
_TAKE_OVER: Any = object()  # a waiting caller's "response": the reader left, read in its place


async def serve_connection(msgs: Any, dispatcher: Dispatcher, max_concurrency: int) -> None:
    """Answer the requests arriving on ``msgs`` until it ends (see the module docstring)."""
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
    connection = _Connection(msgs, dispatcher, max_concurrency)
    connection.start_reader()
    try:
        await connection.finished
    finally:
        await connection.cancel_the_rest()


class _Connection:
    """The serving state of one connection, shared by its reader and the hosts of waiting answers."""

    def __init__(self, msgs: Any, dispatcher: Dispatcher, max_concurrency: int) -> None:
        self.msgs = msgs
        self.dispatcher = dispatcher
        self.max_concurrency = max_concurrency
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.tasks: set[asyncio.Task[None]] = set()  # the reader and the hosts
        self.hosts = 0  # answers that wait, each in the task it started in
        self.slot_freed: asyncio.Future[None] | None = (
            None  # the reader waits on it for a slot, or at the end
        )
        self.sending = False  # an answer is sending: it sends the outbox's replies too, in turn
        self.outbox: deque[bytes] = deque()

    def start_reader(self) -> None:
        task = self.loop.create_task(self.read())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def read(self) -> None:
        """Receive and answer until the end, or until an answer waits: then host it (a new task reads)."""
        receive, answer = self.msgs.receive, self.answer
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                while self.hosts + len(self.outbox) >= self.max_concurrency:  # Rule 1
                    await self.wait_for_a_slot()
                try:
                    data = await receive()
                except _GONE:
                    while self.hosts:  # Rule 2
                        await self.wait_for_a_slot()
                    self.end(None)
                    return
                coro = answer(data)
                context = copy_context()
                try:
                    waiting_on = context.run(coro.send, None)
                except StopIteration:
                    if task.cancelling():  # the method cancelled this task and returned: end now,
                        raise asyncio.CancelledError from None  # not cancel the next request's method
                    continue  # answered
                except asyncio.CancelledError:
                    continue  # the method cancelled itself (nothing cancels this task while it runs)
                break  # the answer waits: this task hosts it
        except Exception as exc:  # the stream broke: the serving task raises it and cancels the hosts
            self.end(exc)
            return
        except BaseException as exc:  # a method cancelled this task, say: no reader would be left
            self.end(exc)
            raise
        self.hosts += 1
        self.start_reader()
        try:
            await _resume(coro, waiting_on, context)
        finally:
            self.hosts -= 1
            self.free_a_slot()

    def end(self, exc: BaseException | None) -> None:
        """The reader is done: the serving ends (with ``exc``, or a RuntimeError for a BaseException)."""
        if self.finished.done():  # the serving was cancelled already
            return
        if exc is None:
            self.finished.set_result(None)
        elif isinstance(exc, Exception):
            self.finished.set_exception(exc)
        else:
            error = RuntimeError(f"the task reading rpc requests from {self.msgs!r} ended: {exc!r}")
            error.__cause__ = exc
            self.finished.set_exception(error)

    async def cancel_the_rest(self) -> None:
        """Cancel the reader and the hosts once, and wait for them (at most ``CLEANUP_TIMEOUT`` s).

        The wait is shielded: a method's cleanup (``finally: await ...``) ends
        before the serving does, even though whoever cancelled the serving
        cancels it again and again (a server closing, ``idle_timeout``).
        """
        if all(task.done() for task in self.tasks):
            return
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            while self.tasks:  # (a host may not start a reader, but make sure)
                for task in self.tasks:
                    task.cancel()
                await asyncio.wait(set(self.tasks))
        if self.tasks:
            logger.warning(
                "rpc: %d method(s) of %r still running %g s after they were cancelled; left running",
                len(self.tasks),
                self.msgs,
                CLEANUP_TIMEOUT,
            )

    async def wait_for_a_slot(self) -> None:
        self.slot_freed = self.loop.create_future()
        await self.slot_freed

    def free_a_slot(self) -> None:
        if self.slot_freed is not None and not self.slot_freed.done():
            self.slot_freed.set_result(None)

    async def answer(self, data: bytes) -> None:
        try:
            reply = await self.dispatcher.handle(data)
            if reply is None:
                return
            if self.sending:  # the answer sending now sends this one too: no wait, no lock
                self.outbox.append(reply)
                return
            self.sending = True
            try:
                while True:
                    try:  # each reply fails alone: logged, and the outbox goes on
                        try:
                            await self.msgs.send(reply)
                        except FrameTooLarge as exc:
                            await self.send_undeliverable(reply, exc)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        self.outbox.clear()  # the peer is gone: the reader sees it too
                        return
                    except Exception:
                        logger.exception("rpc: cannot send a response")
                    if not self.outbox:
                        return
                    reply = self.outbox.popleft()
                    self.free_a_slot()
            finally:
                self.sending = False
        except Exception:
            logger.exception("rpc: cannot answer a request")

    async def send_undeliverable(self, reply: bytes, exc: FrameTooLarge) -> None:
        """``reply`` is over max_size: its caller (each caller of a batch) gets an error instead."""
        dispatcher = self.dispatcher
        await self.msgs.send(dispatcher.undeliverable(dispatcher.codec.decode(reply), str(exc), exc))


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any, context: Context) -> Generator[Any, Any, None]:
    """Run ``coro`` on from where it waits on ``waiting_on``, in ``context``, in the awaiting task."""
    run = context.run
    while True:
        try:
            value = yield waiting_on
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # a cancel (or a future's error) goes to the coroutine
            try:
                waiting_on = run(coro.throw, exc)
            except StopIteration:
                return
        else:
            try:
                waiting_on = run(coro.send, value)
            except StopIteration:
                return


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
        self._sending = False  # a send is under way (it may wait: for room, or a fair yield)
        self._send_waiters: list[asyncio.Future[None]] = []  # callers waiting for it to end
        self._reading = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} over {self._peer} pending={len(self._pending)}>"

    async def _send(self, data: bytes, request_id: int | None) -> None:
        # One send at a time (the stream's rule), with no lock: a send that waits wakes every
        # caller that came meanwhile when it ends, and their sends (which seldom wait) go out
        # in that loop turn. A lock would hand over to one waiter per loop turn, and with
        # many calls in flight every later caller would queue behind it: a convoy.
        while self._sending:
            waiter = asyncio.get_running_loop().create_future()
            self._send_waiters.append(waiter)
            await waiter  # (cancelled here, this caller has sent nothing)
        self._sending = True
        try:
            await self.stream.send(data)
        finally:
            self._sending = False
            if self._send_waiters:
                waiters, self._send_waiters = self._send_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _exchange(
        self, data: bytes, request_id: int, future: asyncio.Future[dict[str, Any]]
    ) -> dict[str, Any]:
        await self._send(data, request_id)
        while True:  # (no coroutine of its own: a caller woken with its response resumes one fewer)
            if future.done() and not future.cancelled() and future.result() is _TAKE_OVER:
                # told to read (perhaps while this call was still sending): its response comes
                # in the fresh future _hand_over put in _pending
                future = self._pending[request_id]
                continue
            if self._lost is not None and not future.done():
                raise self._lost_error()
            if not self._reading:
                return await self._read_until(request_id, future)  # the common case: it reads its own
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
            self._pending.pop(request_id, None)  # answered, or cancelled: this call is over
            if self._pending:
                self._hand_over()  # someone else must read
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
