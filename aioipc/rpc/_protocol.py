"""JSON-RPC 2.0 without I/O: requests in, responses out, for any transport.

Rule 1: one message is one JSON-RPC object (or one batch array), encoded
by the connection's codec; nothing here reads or writes a stream.
Rule 2: every request that has an ``id`` gets exactly one response; a
notification (no ``id`` member) never gets one, not even an error.
Rule 3: nothing a peer sends raises out of :meth:`Dispatcher.handle`; a
handler's exception becomes an error response (and a log line).

The caller side (:class:`Caller`) owns the pending calls of one
connection: each has a future keyed by its id; a response for an id no
longer pending (its call was cancelled or timed out) is dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Callable, Coroutine, Mapping
from types import CoroutineType
from typing import Any, TypeVar

import anyio

from .._core.errors import IPCError, ProtocolError
from .._core.objects import Codec, _Json, resolve_codec

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Caller",
    "Dispatcher",
    "Handlers",
    "RemoteError",
]

logger = logging.getLogger("aioipc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}

Handlers = Mapping[str, Callable[..., Any]] | object
T = TypeVar("T")
_MISSING: Any = object()


class RemoteError(IPCError):
    """An error response from the other side: ``code``, ``message`` and ``data`` as JSON-RPC sent them.

    A handler may raise it too, to answer with its own error: the code,
    message and data go out as given (use -32000 to -32099 for server
    errors, or any code outside -32768 to -32000 for your application's).

    Example::

        try:
            await client.call("divide", 1, 0)
        except aioipc.rpc.RemoteError as exc:
            print(exc.code, exc.message, exc.data)
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"remote error {code}: {message}" + ("" if data is None else f" ({data!r})"))
        self.code = code
        self.message = message
        self.data = data


def _error(request_id: Any, code: int, message: str | None = None, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message or _MESSAGES[code]}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": request_id}


_ID_TYPES = (str, int, float)
_HEADS = 256


async def _ready(value: T) -> T:
    return value


def _unchanged(response: dict[str, Any]) -> dict[str, Any]:
    return response


def _result(result: Any, reply_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": result, "id": reply_id}


def _json_text(codec: Codec) -> Callable[[Any], str] | None:
    """The standard JSON codec's ``dumps``: an rpc envelope is then built around its parts' text."""
    return codec.dumps if isinstance(codec, _Json) else None


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, _ID_TYPES) and value is not True and value is not False)


class _Method:
    """A handler, and whether a ``TypeError`` at call time can only mean bad params."""

    __slots__ = ("function", "signature")

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        # Calling an ``async def`` binds its arguments and runs nothing else: a TypeError there is
        # the caller's params. Other callables are checked against their signature first.
        self.signature: inspect.Signature | None = None
        if not inspect.iscoroutinefunction(function):
            try:
                self.signature = inspect.signature(function)
            except (TypeError, ValueError):  # a builtin without a signature: call and see
                self.signature = None


def method_table(handlers: Handlers) -> dict[str, _Method]:
    """``{"name": fn}`` as given, or an object's public coroutine methods by name."""
    if isinstance(handlers, Mapping):
        table = {}
        for name, function in handlers.items():
            if not isinstance(name, str) or not callable(function):
                raise TypeError(f"handlers must map method names to callables, not {name!r}: {function!r}")
            table[name] = _Method(function)
        return table
    table = {}
    for name in dir(handlers):
        if name.startswith("_") or isinstance(inspect.getattr_static(handlers, name), property):
            continue
        attribute = getattr(handlers, name)
        if inspect.iscoroutinefunction(attribute):
            table[name] = _Method(attribute)
    if not table:
        raise TypeError(f"{handlers!r} has no public async methods to serve")
    return table


class Dispatcher:
    """Answers JSON-RPC messages with the methods of ``handlers`` (shared by every connection)."""

    def __init__(self, handlers: Handlers, codec: str | Codec = "json") -> None:
        self.methods = method_table(handlers)
        self.codec = resolve_codec(codec)
        self._dumps = _json_text(self.codec)

    def handle(self, data: bytes) -> Coroutine[Any, Any, bytes | None]:
        """The encoded response to the message ``data`` (``None``: nothing to answer), to await.

        Not ``async def``: a single request is answered by one coroutine, not two.
        """
        try:
            message = self.codec.decode(data)
        except Exception:
            return _ready(self.encode(_error(None, PARSE_ERROR)))
        if isinstance(message, dict):
            return self._answer(message, self.encode, self._encode_result)
        if isinstance(message, list) and message:
            return self._answer_batch(message)
        return _ready(self.encode(_error(None, INVALID_REQUEST)))

    async def _answer_batch(self, batch: list[Any]) -> bytes | None:
        answers = await asyncio.gather(*(self._answer(item, _unchanged, _result) for item in batch))
        responses = [response for response in answers if response is not None]
        return self.encode(responses) if responses else None

    def encode(self, response: Any) -> bytes:
        try:
            return self.codec.encode(response)
        except Exception as exc:  # a result the codec cannot carry: say so, per request
            logger.error("rpc: cannot encode a response: %s", exc)
            return self.undeliverable(response, f"cannot encode the result: {exc}", exc)

    def undeliverable(self, response: Any, why: str, exc: Exception) -> bytes:
        """Error responses (-32603) in place of ``response``, which could not go out (too large ...)."""
        data = {"type": type(exc).__name__, "message": why}
        if isinstance(response, list):
            return self.codec.encode([_error(r.get("id"), INTERNAL_ERROR, data=data) for r in response])
        return self.codec.encode(_error(response.get("id"), INTERNAL_ERROR, data=data))

    async def _answer(
        self, request: Any, finish: Callable[[dict[str, Any]], T], result_of: Callable[[Any, Any], T]
    ) -> T | None:
        """``result_of(result, id)`` or ``finish(error response)`` for ``request``; None: a notification."""
        started = self._start(request)
        if not isinstance(started, tuple):
            return None if started is None else finish(started)
        result, reply_id, method_name = started
        if type(result) is CoroutineType or inspect.isawaitable(result):
            try:
                result = await result
            except Exception as exc:
                return None if reply_id is _MISSING else finish(self._failed(reply_id, method_name, exc))
        return None if reply_id is _MISSING else result_of(result, reply_id)

    def _encode_result(self, result: Any, reply_id: Any) -> bytes:
        dumps = self._dumps
        if dumps is not None:  # JSON: the envelope is a constant around the result and the id
            try:
                return f'{{"jsonrpc":"2.0","result":{dumps(result)},"id":{dumps(reply_id)}}}'.encode()
            except Exception:
                pass  # encode() says why, per request
        return self.encode(_result(result, reply_id))

    def _start(self, request: Any) -> tuple[Any, Any, str] | dict[str, Any] | None:
        """Call the method ``request`` names: (its result, the id or _MISSING, the name), or the response."""
        if not isinstance(request, dict):
            return _error(None, INVALID_REQUEST)
        request_id = request.get("id", _MISSING)
        notification = request_id is _MISSING
        if not notification and not _valid_id(request_id):
            return _error(None, INVALID_REQUEST, data="id must be a string, a number or null")
        reply_id = None if notification else request_id
        method_name = request.get("method")
        params = request.get("params", _MISSING)
        if request.get("jsonrpc") != "2.0" or not isinstance(method_name, str):
            return None if notification else _error(reply_id, INVALID_REQUEST)
        if params is _MISSING:
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
        elif isinstance(params, list):
            args, kwargs = params, {}
        elif isinstance(params, dict):
            args, kwargs = [], params
        else:
            return (
                None
                if notification
                else _error(reply_id, INVALID_REQUEST, data="params must be an array or object")
            )
        method = self.methods.get(method_name)
        if method is None:
            return None if notification else _error(reply_id, METHOD_NOT_FOUND, data=method_name)
        try:
            if method.signature is not None:
                method.signature.bind(*args, **kwargs)
            return method.function(*args, **kwargs), request_id, method_name
        except TypeError as exc:
            return None if notification else _error(reply_id, INVALID_PARAMS, data=str(exc))
        except Exception as exc:  # a sync handler raised
            return None if notification else self._failed(reply_id, method_name, exc)

    @staticmethod
    def _failed(reply_id: Any, method_name: str, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, RemoteError):
            return _error(reply_id, exc.code, exc.message, exc.data)
        logger.error("rpc: method %r raised", method_name, exc_info=exc)
        return _error(reply_id, INTERNAL_ERROR, data={"type": type(exc).__name__, "message": str(exc)})


class Caller:
    """The calling side of one connection: ids, pending futures, responses turned into results.

    A transport subclass sends with :meth:`_send` and feeds what arrives to
    :meth:`_deliver` (from its own reader, or from the callers themselves in
    :meth:`_exchange`); :meth:`_fail_all` ends every pending call when the
    connection is lost.
    """

    def __init__(self, codec: str | Codec, peer: str) -> None:
        self.codec = resolve_codec(codec)
        self._dumps = _json_text(self.codec)
        self._peer = peer
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lost: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first call
        self._heads: dict[str, str] = {}  # a request's JSON up to its params, by method name

    def _head(self, method: Any, dumps: Callable[[Any], str]) -> str:
        """The JSON of a request up to its params (kept for the first ``_HEADS`` method names)."""
        head = f'{{"jsonrpc":"2.0","method":{dumps(method)}'
        if type(method) is str and len(self._heads) < _HEADS:
            self._heads[method] = head
        return head

    async def _send(self, data: bytes, request_id: int | None) -> None:
        raise NotImplementedError

    async def _response(self, request_id: int, future: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        """Wait for the response to ``request_id`` (a transport that reads in the caller overrides this)."""
        return await future

    async def _exchange(
        self, data: bytes, request_id: int, future: asyncio.Future[dict[str, Any]]
    ) -> dict[str, Any]:
        """Send the request ``data``, then wait for its response (a transport may do both in one frame)."""
        await self._send(data, request_id)
        return await self._response(request_id, future)

    async def call(self, method: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` with positional or keyword params; return its result.

        Raises:
            RemoteError: the server answered with an error (``.code`` -32601: no such method).
            TimeoutError: no response within ``timeout`` seconds; a late one is dropped.
            anyio.BrokenResourceError: the connection was lost before the response came.
            TypeError: both positional and keyword params (JSON-RPC allows one kind).
        """
        if args and kwargs:
            raise TypeError("JSON-RPC params are positional or named, not both")
        if self._lost is not None:
            raise self._lost_error()
        request_id = next(self._ids)
        dumps = self._dumps
        if dumps is not None:  # JSON: the envelope is a constant around the method, params and id
            head = self._heads.get(method) if type(method) is str else None
            if head is None:
                head = self._head(method, dumps)
            if args:  # each param alone: a str or an int skips the encoder's setup
                data = f'{head},"params":[{",".join(map(dumps, args))}],"id":{request_id}}}'.encode()
            elif kwargs:
                data = f'{head},"params":{dumps(kwargs)},"id":{request_id}}}'.encode()
            else:
                data = f'{head},"id":{request_id}}}'.encode()
        else:
            request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
            if args or kwargs:
                request["params"] = kwargs or list(args)
            data = self.codec.encode(request)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = future
        try:
            if timeout is None:
                response = await self._exchange(data, request_id, future)
            else:
                with anyio.fail_after(timeout):
                    response = await self._exchange(data, request_id, future)
        finally:
            self._pending.pop(request_id, None)
        if "error" in response:
            return self._raise(response["error"])
        if "result" not in response:
            raise ProtocolError(f"a response from {self._peer} has neither result nor error: {response!r}")
        return response["result"]

    async def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification: ``method`` runs on the server, nothing comes back (not even an error).

        Raises:
            anyio.BrokenResourceError: the connection is lost.
        """
        if args and kwargs:
            raise TypeError("JSON-RPC params are positional or named, not both")
        if self._lost is not None:
            raise self._lost_error()
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if args or kwargs:
            request["params"] = kwargs or list(args)
        await self._send(self.codec.encode(request), None)

    def _raise(self, error: Any) -> Any:
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            raise ProtocolError(f"a malformed error object from {self._peer}: {error!r}")
        raise RemoteError(error["code"], str(error.get("message", "")), error.get("data"))

    def _deliver(self, data: bytes) -> None:
        """Hand a received message to the calls it answers; drop late or unknown replies."""
        try:
            message = self.codec.decode(data)
        except Exception as exc:
            logger.warning(
                "rpc: %s sent a message that is not %s: %s", self._peer, type(self.codec).__name__, exc
            )
            return
        for response in message if isinstance(message, list) else (message,):
            if not isinstance(response, dict):
                logger.warning("rpc: %s sent a response that is not an object: %r", self._peer, response)
                continue
            future = self._pending.get(response.get("id"))
            if future is not None and not future.done():
                future.set_result(response)
            elif response.get("id") is None and "error" in response:
                logger.warning("rpc: %s could not read a request: %r", self._peer, response["error"])

    def _fail(self, request_id: Any, exc: BaseException) -> None:
        future = self._pending.get(request_id)
        if future is not None and not future.done():
            future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        """The connection is gone: every pending call and every later one raises ``exc``'s kind."""
        if self._lost is None:
            self._lost = exc
        for request_id in list(self._pending):
            self._fail(request_id, self._lost_error())

    def _lost_error(self) -> BaseException:
        lost = self._lost
        if isinstance(lost, anyio.ClosedResourceError | anyio.BrokenResourceError):
            error: BaseException = type(lost)(*lost.args)
        else:
            error = anyio.BrokenResourceError(f"the rpc connection to {self._peer} is lost: {lost}")
        error.__cause__ = lost.__cause__ if lost is not None else None
        return error
