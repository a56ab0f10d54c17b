"""``ObjectStream``: Python objects over a message stream, through a named codec."""

from __future__ import annotations

import json
import json.encoder
import json.scanner
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
    """Compact UTF-8 JSON. The C encoder and scanner are built once, not per message as
    ``JSONEncoder.encode`` and ``JSONDecoder.decode`` do; anything unusual (leading
    whitespace, an error) takes the standard path, so results and errors are json's own."""

    name = "json"

    def __init__(self) -> None:
        encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
        decoder = json.JSONDecoder()
        self._encode = encoder.encode
        self._decode = decoder.decode
        self._markers: dict[int, Any] = {}  # the C encoder's circular-reference check
        # the C accelerators json itself uses (absent from the type stubs; None without _json)
        make_encoder = getattr(json.encoder, "c_make_encoder", None)
        make_scanner = getattr(json.scanner, "c_make_scanner", None)
        self._chunks: Callable[[Any, int], Any] | None = None
        if make_encoder is not None:
            basestring = json.encoder.encode_basestring
            self._chunks = make_encoder(
                self._markers, encoder.default, basestring, None, ":", ",", False, False, True
            )
        self._scan: Callable[[str, int], tuple[Any, int]] | None = (
            None if make_scanner is None else make_scanner(decoder)
        )

    def encode(self, obj: Any) -> bytes:
        return self.dumps(obj).encode()

    def dumps(self, obj: Any) -> str:
        """``obj`` as JSON text, as ``encode`` makes it (for a message built around it)."""
        if type(obj) is str:
            return json.encoder.encode_basestring(obj)
        if type(obj) is int:  # an rpc id: as json writes an int
            return int.__repr__(obj)
        chunks = self._chunks
        if chunks is None:
            return self._encode(obj)
        try:
            return "".join(chunks(obj, 0))
        except BaseException:
            self._markers.clear()  # what a failed encode left behind would read as a cycle next time
            raise

    def decode(self, data: bytes) -> Any:
        # JSON between programs is UTF-8 (RFC 8259): no encoding sniffing, as json.loads(bytes) does
        text = str(data, "utf-8")
        scan = self._scan
        if scan is not None:
            try:
                obj, end = scan(text, 0)
            except (StopIteration, ValueError):
                pass  # leading whitespace or not JSON: decode() says which, as json does
            else:
                if end == len(text):
                    return obj
        return self._decode(text)


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
