"""``ObjectStream``: Python objects over a message stream, through a named codec."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import anyio.abc

from .errors import ProtocolError
from .streams import OverTransport

__all__ = ["Codec", "ObjectStream", "resolve_codec"]


class Codec(Protocol):
    """Anything with ``encode(obj) -> bytes`` and ``decode(bytes) -> obj``."""

    def encode(self, obj: Any) -> bytes: ...
    def decode(self, data: bytes) -> Any: ...


class _Json:
    name = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
        self._decode = json.JSONDecoder().decode

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj).encode()

    def decode(self, data: bytes) -> Any:
        # JSON between programs is UTF-8 (RFC 8259): no encoding sniffing, as json.loads(bytes) does
        return self._decode(str(data, "utf-8"))


class _Msgpack:
    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise ImportError("the msgpack codec needs the extra: pip install 'aioipc[msgpack]'") from None
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    def encode(self, obj: Any) -> bytes:
        data: bytes = self._packb(obj)
        return data

    def decode(self, data: bytes) -> Any:
        return self._unpackb(data)


class _Pickle:
    name = "pickle"

    def __init__(self) -> None:
        import pickle

        self._dumps = pickle.dumps
        self._loads = pickle.loads

    def encode(self, obj: Any) -> bytes:
        return self._dumps(obj, protocol=5)

    def decode(self, data: bytes) -> Any:
        return self._loads(data)


_CODECS: dict[str, Callable[[], Codec]] = {"json": _Json, "msgpack": _Msgpack, "pickle": _Pickle}


def resolve_codec(codec: str | Codec) -> Codec:
    """The codec named ``codec`` (``"json"``, ``"msgpack"``, ``"pickle"``), or ``codec`` itself.

    Raises:
        ValueError: an unknown name.
        ImportError: ``"msgpack"`` without its extra.
    """
    if not isinstance(codec, str):
        return codec
    try:
        factory = _CODECS[codec]
    except KeyError:
        raise ValueError(
            f"unknown codec {codec!r}; use one of {', '.join(_CODECS)} or a codec object"
        ) from None
    return factory()


class ObjectStream(OverTransport, anyio.abc.ObjectStream[Any]):
    """Objects over a message stream, one message each.

    Args:
        stream: a message stream (or either half of one).
        codec: ``"json"`` (default), ``"msgpack"`` (extra ``msgpack``),
            ``"pickle"``, or any object with ``encode``/``decode``.

    Raises:
        ProtocolError: on ``receive()``, a message the codec cannot decode.
            The message is consumed; the stream stays usable.
        TypeError, ValueError: on ``send()``, an object the codec cannot encode.

    Caveats:
        ``pickle`` runs code from the peer when decoding: use it only between
        processes that trust each other. It is never the default.

    Example::

        objs = aioipc.ObjectStream(await aioipc.connect("unix:/run/app.sock"), codec="json")
        await objs.send({"op": "ping"})
    """

    def __init__(self, stream: Any, codec: str | Codec = "json") -> None:
        self.transport_stream = stream
        self.codec = resolve_codec(codec)

    async def send(self, item: Any) -> None:
        await self.transport_stream.send(self.codec.encode(item))

    async def receive(self) -> Any:
        data = await self.transport_stream.receive()
        try:
            return self.codec.decode(data)
        except Exception as exc:
            raise ProtocolError(f"cannot decode a message with {type(self.codec).__name__}: {exc}") from exc
