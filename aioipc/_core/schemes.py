"""Addresses: one parser for ``scheme:rest``, and ``connect()`` / ``serve()`` dispatch.

Schemes::

    unix:/path  unix:@name  unix+dgram:/path  unix+seqpacket:/path
    tcp:host:port  udp:host:port  ([v6]:port for IPv6)
    fifo:/path  mq:/name  sysvmq:KEY  sysvmq:/path#proj  shm:/name
    sd-listen:  sd-listen:NAME  (sockets systemd passed; serve only)

A mechanism module registers its schemes with :func:`register_scheme` when
it is imported; :func:`connect` and :func:`serve` import it on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .framing import DEFAULT_MAX_SIZE

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Address", "available_schemes", "connect", "parse_address", "register_scheme", "serve"]

_SCHEME_MODULES = {
    "unix": "aioipc.sockets",
    "unix+dgram": "aioipc.sockets",
    "unix+seqpacket": "aioipc.sockets",
    "tcp": "aioipc.sockets",
    "udp": "aioipc.sockets",
    "fifo": "aioipc.fifo",
    "mq": "aioipc.mq",
    "sysvmq": "aioipc.sysv",
    "shm": "aioipc.shm",
    "sd-listen": "aioipc.systemd",
}

Framing = Literal["length"] | None
Handler = Callable[[Any], Awaitable[object]]


# connect(address, *, framing, max_size, **options) -> stream
Connector = Callable[..., Awaitable[Any]]
# serve(address, handler, *, framing, max_size, **options) -> Server
Starter = Callable[..., Awaitable["Server"]]


_REGISTRY: dict[str, tuple[Connector, Starter]] = {}


@dataclass(frozen=True)
class Address:
    """A parsed address. ``str(address)`` gives it back in address syntax.

    ``path`` holds the socket path (``@name`` for abstract), FIFO path, queue
    or segment name, or the ``ftok`` path of ``sysvmq:/path#proj``.
    """

    scheme: str
    path: str = ""
    host: str = ""
    port: int = 0
    key: int | None = None
    proj: int | None = None

    @property
    def abstract(self) -> bool:
        """A Unix socket name in the abstract namespace (``unix:@name``)."""
        return self.scheme.startswith("unix") and self.path.startswith("@")

    def __str__(self) -> str:
        if self.scheme in ("tcp", "udp"):
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{self.scheme}:{host}:{self.port}"
        if self.scheme == "sysvmq":
            return f"sysvmq:{self.path}#{self.proj}" if self.path else f"sysvmq:{self.key:#x}"
        return f"{self.scheme}:{self.path}"


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"bad address {text!r}: {why}; schemes: {', '.join(_SCHEME_MODULES)}")


def parse_address(text: str | Address) -> Address:
    """Parse ``scheme:rest`` into an :class:`Address`.

    Raises:
        ValueError: unknown scheme or malformed rest; the message names the schemes.

    Example::

        >>> parse_address("tcp:127.0.0.1:0")
        Address(scheme='tcp', path='', host='127.0.0.1', port=0, key=None, proj=None)
    """
    if isinstance(text, Address):
        return text
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in _SCHEME_MODULES:
        raise _bad(text, f"unknown scheme {scheme!r}" if sep else "no scheme")
    if not rest and scheme != "sd-listen":  # "sd-listen:" is the one inherited socket
        raise _bad(text, "nothing after the scheme")
    if scheme in ("tcp", "udp"):
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise _bad(text, "expected host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise _bad(text, "port must be a number from 0 to 65535")
        return Address(scheme, host=host, port=int(port_text))
    if scheme == "sysvmq":
        if "#" in rest:
            path, _, proj_text = rest.rpartition("#")
            if not path or not proj_text.isdigit() or not 1 <= int(proj_text) <= 255:
                raise _bad(text, "expected /path#proj with proj from 1 to 255")
            return Address(scheme, path=path, proj=int(proj_text))
        try:
            key = int(rest, 0)
        except ValueError:
            raise _bad(text, "key must be decimal or 0x-hex, or /path#proj") from None
        if not -(2**31) <= key < 2**32:
            raise _bad(text, "key out of range for a 32-bit key_t")
        return Address(scheme, key=key)
    if scheme in ("mq", "shm") and (not rest.startswith("/") or "/" in rest[1:] or len(rest) < 2):
        raise _bad(text, "the name must be one '/' followed by other characters")
    if scheme.startswith("unix") and rest.startswith("@") and len(rest) < 2:
        raise _bad(text, "an abstract name needs characters after '@'")
    if "\0" in rest:
        raise _bad(text, "NUL character in the path")
    return Address(scheme, path=rest)


def register_scheme(scheme: str, connect: Connector, serve: Starter) -> None:
    """Make ``connect()`` and ``serve()`` work for ``scheme`` (called by mechanism modules)."""
    if scheme not in _SCHEME_MODULES:
        raise ValueError(f"unknown scheme {scheme!r}")
    _REGISTRY[scheme] = (connect, serve)


def _load(scheme: str) -> None:
    try:
        importlib.import_module(_SCHEME_MODULES[scheme])
    except ModuleNotFoundError as exc:
        if exc.name != _SCHEME_MODULES[scheme]:
            raise


def available_schemes() -> list[str]:
    """The schemes ``connect()`` and ``serve()`` handle in this installation."""
    for scheme in _SCHEME_MODULES:
        try:
            _load(scheme)
        except ImportError:
            continue
    return [scheme for scheme in _SCHEME_MODULES if scheme in _REGISTRY]


def _lookup(address: Address) -> tuple[Connector, Starter]:
    if address.scheme not in _REGISTRY:
        try:
            _load(address.scheme)
        except ImportError as exc:
            raise ValueError(f"the {address.scheme}: scheme cannot be used here: {exc}") from exc
    try:
        return _REGISTRY[address.scheme]
    except KeyError:
        working = ", ".join(available_schemes())
        raise ValueError(f"the {address.scheme}: scheme is not available; working: {working}") from None


def _check_framing(framing: object) -> None:
    if framing not in ("length", None):
        raise ValueError(f"framing must be 'length' or None, not {framing!r}")


async def connect(
    address: str | Address, *, framing: Framing = "length", max_size: int = DEFAULT_MAX_SIZE, **options: Any
) -> Any:
    """Open a stream to the object at ``address``.

    Byte transports (stream sockets, FIFOs) come back framed as message
    streams unless ``framing=None``; message transports (datagram and
    seqpacket sockets, queues, rings) are message streams already. For a
    FIFO this is its writing end (waiting for a reader); for a queue or
    ring, the existing object.

    Args:
        framing: ``"length"`` (4-byte big-endian prefix) or ``None`` for raw bytes.
        max_size: the largest message sent or accepted.
        options: passed to the mechanism (e.g. ``timeout``).

    Raises:
        ValueError: malformed address, or a scheme not available here.
        OSError: as the mechanism raises it (``FileNotFoundError``, ``ConnectionRefusedError`` ...).

    Example::

        async with await aioipc.connect("unix:/run/app.sock") as msgs:
            await msgs.send(b"ping")
    """
    _check_framing(framing)
    addr = parse_address(address)
    connector, _ = _lookup(addr)
    return await connector(addr, framing=framing, max_size=max_size, **options)


async def serve(
    address: str | Address,
    handler: Handler,
    *,
    framing: Framing = "length",
    max_size: int = DEFAULT_MAX_SIZE,
    **options: Any,
) -> Server:
    """Create the object at ``address`` and call ``handler(stream)`` for what arrives.

    For sockets, one handler call per connection, concurrently; for a FIFO
    or queue, one call with its receiving side. The server is accepting
    when this returns; ``async with server:`` closes it at the end.

    Raises:
        ValueError: malformed address, or a scheme not available here.
        FileExistsError, AddressInUse: the object exists (a live server is never stolen).

    Example::

        async def handler(msgs):
            async for m in msgs:
                await msgs.send(m)

        async with await aioipc.serve("unix:/tmp/echo.sock", handler) as server:
            await server.serve_forever()
    """
    _check_framing(framing)
    addr = parse_address(address)
    _, starter = _lookup(addr)
    return await starter(addr, handler, framing=framing, max_size=max_size, **options)
