"""Addresses: the one table of schemes, one parser, and ``connect()`` / ``serve()``.

Every scheme is one :class:`Scheme` entry in :data:`SCHEMES`: its syntax,
how its text parses and formats, where its ``connect``/``serve`` live (a
module imported on first use), whether it carries whole messages or bytes,
the options each direction accepts, and how ``aioipc rm`` removes what it
leaves behind. The CLI's help, ``aioipc schemes``, ``aioipc rm`` and the
errors for bad addresses or options all read this table.

A mechanism module provides, for each scheme it serves::

    async def connect_address(address, *, max_size, timeout, **options) -> stream
    async def serve_address(address, handler, *, framing, max_size, **options) -> Server

``connect_address`` returns the raw stream: a byte stream for byte schemes
(the core frames it here) or a message stream for message schemes. A
scheme whose object is its own server (a queue: whoever creates it serves)
is marked ``served_by_creating`` and needs no ``serve_address``: ``serve()``
creates the object with ``connect_address(address, create=True, ...)`` and
hands it to one handler call.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import anyio

from .framing import DEFAULT_MAX_SIZE
from .server import Server
from .streams import ByteStream, MessageStream, frame_connected

__all__ = [
    "SCHEMES",
    "Address",
    "Framing",
    "Scheme",
    "available_schemes",
    "connect",
    "parse_address",
    "serve",
]

Framing = Literal["length", "lines"] | None
Handler = Callable[[Any], Awaitable[object]]

_FIRST_RETRY = 0.002
_MAX_RETRY = 0.1


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
        return SCHEMES[self.scheme].format(self)


class _BadRest(ValueError):
    """Raised by a scheme's parse function: why the rest of the address is wrong."""


# -- parse and format functions, one per syntax ------------------------------------------------


def _parse_path(scheme: str, rest: str) -> Address:
    if "\0" in rest:
        raise _BadRest("NUL character in the path")
    return Address(scheme, path=rest)


def _parse_unix(scheme: str, rest: str) -> Address:
    if rest.startswith("@") and len(rest) < 2:
        raise _BadRest("an abstract name needs characters after '@'")
    # sun_path is 108 bytes with its terminating NUL (abstract names: no NUL, the '@' stands for it)
    limit = 108 if rest.startswith("@") else 107
    if len(os.fsencode(rest)) > limit:
        raise _BadRest(
            f"a Unix socket path is at most {limit} bytes (the kernel's sun_path); this one is "
            f"{len(os.fsencode(rest))}: use a shorter path, e.g. under /run or /tmp, or an @abstract name"
        )
    return _parse_path(scheme, rest)


def _parse_name(scheme: str, rest: str) -> Address:
    if not rest.startswith("/") or "/" in rest[1:] or len(rest) < 2:
        raise _BadRest("the name must be one '/' followed by other characters")
    return _parse_path(scheme, rest)


def _parse_host_port(scheme: str, rest: str) -> Address:
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host:
        raise _BadRest("expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise _BadRest("port must be a number from 0 to 65535")
    return Address(scheme, host=host, port=int(port_text))


def _format_host_port(address: Address) -> str:
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{address.scheme}:{host}:{address.port}"


def _parse_sysv(scheme: str, rest: str) -> Address:
    if "#" in rest:
        path, _, proj_text = rest.rpartition("#")
        if not path or not (proj_text.isascii() and proj_text.isdigit()) or not 1 <= int(proj_text) <= 255:
            raise _BadRest("expected /path#proj with proj from 1 to 255")
        return Address(scheme, path=path, proj=int(proj_text))
    try:
        if not rest.isascii():
            raise ValueError
        key = int(rest, 0)
    except ValueError:
        raise _BadRest("key must be decimal or 0x-hex, or /path#proj") from None
    if not -(2**31) <= key < 2**32:
        raise _BadRest("key out of range for a 32-bit key_t")
    return Address(scheme, key=key)


def _format_sysv(address: Address) -> str:
    if address.path:
        return f"{address.scheme}:{address.path}#{address.proj}"
    return f"{address.scheme}:{address.key:#x}"


def _format_path(address: Address) -> str:
    return f"{address.scheme}:{address.path}"


# -- the table ----------------------------------------------------------------------------------

_UNIX_SERVE = frozenset({"mode", "persist", "max_connections", "allowed_uids", "backlog", "idle_timeout"})


@dataclass(frozen=True)
class Scheme:
    """One address scheme: everything aioipc knows about it, in one place.

    Attributes:
        name: the text before the first ``:``.
        syntax: how an address of this scheme is written, for help and errors.
        summary: what it is, in a few words.
        module: the module holding ``connect_address`` / ``serve_address``,
            imported on first use.
        messages: ``True`` when the transport carries whole messages itself
            (framing does not apply); ``False`` for byte transports, framed
            by ``framing=``.
        parse: ``(scheme, rest) -> Address``; raises ``ValueError`` saying why.
        format: ``Address -> str``, the inverse of ``parse``.
        connect_options: options ``connect()`` takes beyond ``framing``,
            ``max_size`` and ``timeout``; ``None``: this scheme cannot be connected to.
        serve_options: options ``serve()`` takes beyond ``framing`` and
            ``max_size``; ``None``: this scheme cannot be served.
        extra: the pip extra it needs (``pip install 'aioipc[EXTRA]'``), if any.
        removable: ``aioipc rm`` can remove an object at such an address.
        bare: ``NAME:`` alone is a whole address (``sd-listen:``).
        served_by_creating: ``serve()`` creates the object through the
            module's ``connect_address(..., create=True)`` and calls the
            handler once with it (the module has no ``serve_address``).
    """

    name: str
    syntax: str
    summary: str
    module: str
    messages: bool
    parse: Callable[[str, str], Address] = _parse_path
    format: Callable[[Address], str] = _format_path
    connect_options: frozenset[str] | None = frozenset()
    serve_options: frozenset[str] | None = frozenset()
    extra: str = ""
    removable: bool = False
    bare: bool = False
    served_by_creating: bool = False

    def functions(self) -> Any:
        """The mechanism module, imported now.

        Raises:
            ValueError: the scheme needs an extra that is not installed.
        """
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            if not self.extra:
                raise
            raise ValueError(
                f"the {self.name}: scheme needs the '{self.extra}' extra: pip install 'aioipc[{self.extra}]'"
            ) from exc


def _table(*schemes: Scheme) -> Mapping[str, Scheme]:
    return {scheme.name: scheme for scheme in schemes}


SCHEMES: Mapping[str, Scheme] = _table(
    Scheme(
        "unix", "unix:/path | unix:@name", "Unix stream socket (@: abstract namespace)", "aioipc.sockets",
        messages=False, parse=_parse_unix, serve_options=_UNIX_SERVE, removable=True,
    ),
    Scheme(
        "unix+seqpacket", "unix+seqpacket:/path | unix+seqpacket:@name",
        "Unix seqpacket socket: connections with message boundaries", "aioipc.sockets",
        messages=True, parse=_parse_unix, serve_options=_UNIX_SERVE, removable=True,
    ),
    Scheme(
        "unix+dgram", "unix+dgram:/path | unix+dgram:@name", "Unix datagram socket", "aioipc.sockets",
        messages=True, parse=_parse_unix, serve_options=frozenset({"mode", "persist"}), removable=True,
    ),
    Scheme(
        "tcp", "tcp:host:port | tcp:[v6]:port", "TCP (ssl= for TLS)", "aioipc.sockets",
        messages=False, parse=_parse_host_port, format=_format_host_port,
        connect_options=frozenset({"nodelay", "ssl", "server_hostname"}),
        serve_options=frozenset(
            {"max_connections", "backlog", "ssl", "handshake_timeout", "nodelay", "idle_timeout"}
        ),
    ),
    Scheme(
        "udp", "udp:host:port | udp:[v6]:port", "UDP datagrams", "aioipc.sockets",
        messages=True, parse=_parse_host_port, format=_format_host_port,
    ),
    Scheme(
        "fifo", "fifo:/path", "named pipe: connect writes, serve reads", "aioipc.fifo",
        messages=False, serve_options=frozenset({"mode"}), removable=True,
    ),
    Scheme(
        "mq", "mq:/name", "POSIX message queue", "aioipc.mq",
        messages=True, parse=_parse_name, connect_options=frozenset({"read", "write"}),
        serve_options=frozenset({"max_messages", "max_message_size", "mode", "persist", "exist_ok"}),
        removable=True, served_by_creating=True,
    ),
    Scheme(
        "sysvmq", "sysvmq:KEY | sysvmq:/path#proj",
        "System V message queue (KEY decimal or 0x-hex; proj 1-255)", "aioipc.sysv",
        messages=True, parse=_parse_sysv, format=_format_sysv,
        serve_options=frozenset({"mode", "persist", "exist_ok"}), extra="sysv", removable=True,
        served_by_creating=True,
    ),
    Scheme(
        "shm", "shm:/name", "shared-memory ring between two processes", "aioipc.shm",
        messages=True, parse=_parse_name, connect_options=frozenset({"spin"}),
        serve_options=frozenset({"capacity", "mode", "spin"}), removable=True,
    ),
    Scheme(
        "spool", "spool:/dir", "durable queue in a directory (maildir): connect sends, serve receives",
        "aioipc.spool", messages=True, connect_options=frozenset({"sync"}),
    ),
    Scheme(
        "sd-listen", "sd-listen: | sd-listen:NAME",
        "a listening socket systemd passed (LISTEN_FDS; NAME: FileDescriptorName); serve only",
        "aioipc.systemd", messages=False, connect_options=None, bare=True,
        serve_options=frozenset(
            {"max_connections", "allowed_uids", "idle_timeout", "ssl", "handshake_timeout", "nodelay"}
        ),
    ),
)  # fmt: skip


def _bad(text: str, why: str, scheme: Scheme | None = None) -> ValueError:
    if scheme is not None:
        return ValueError(f"bad address {text!r}: {why}; expected {scheme.syntax}")
    return ValueError(f"bad address {text!r}: {why}; schemes: {', '.join(SCHEMES)}")


def parse_address(text: str | Address) -> Address:
    """Parse ``scheme:rest`` into an :class:`Address`.

    Raises:
        ValueError: unknown scheme or malformed rest; the message shows the
            scheme's syntax (or lists the schemes).

    Example::

        >>> parse_address("tcp:127.0.0.1:0")
        Address(scheme='tcp', path='', host='127.0.0.1', port=0, key=None, proj=None)
    """
    if isinstance(text, Address):
        return text
    if not isinstance(text, str):
        raise TypeError(f"an address is a str like 'unix:/run/app.sock', not {type(text).__name__}")
    name, sep, rest = text.partition(":")
    scheme = SCHEMES.get(name)
    if not sep or scheme is None:
        raise _bad(text, f"unknown scheme {name!r}" if sep else "no scheme")
    if not rest and not scheme.bare:
        raise _bad(text, "nothing after the scheme", scheme)
    try:
        return scheme.parse(name, rest)
    except _BadRest as exc:
        raise _bad(text, str(exc), scheme) from None


def available_schemes() -> list[str]:
    """The schemes ``connect()`` and ``serve()`` handle in this installation (extras present)."""
    names = []
    for scheme in SCHEMES.values():
        try:
            scheme.functions()
        except (ImportError, ValueError):
            continue
        names.append(scheme.name)
    return names


def _check_options(
    scheme: Scheme, call: str, allowed: frozenset[str] | None, options: Mapping[str, Any]
) -> None:
    if allowed is None:
        only = "served" if call == "connect" else "connected to"
        raise ValueError(
            f"{scheme.name}: addresses can only be {only}, not used with {call}(): {scheme.summary}"
        )
    unknown = sorted(set(options) - allowed)
    if unknown:
        base = ("framing", "max_size", "timeout") if call == "connect" else ("framing", "max_size")
        takes = ", ".join([*base, *sorted(allowed)])
        raise TypeError(
            f"{call}() got an unexpected option {unknown[0]!r} for a {scheme.name}: address; "
            f"{scheme.name}: takes {takes}"
        )


_DEFAULT: Any = object()  # tells an explicit framing="length" from the default


def _prepare(
    address: str | Address, framing: Framing, call: Literal["connect", "serve"], options: Mapping[str, Any]
) -> tuple[Address, Scheme, Framing, Any]:
    """What connect() and serve() do first: parse, check framing and options, import the mechanism."""
    addr = parse_address(address)
    scheme = SCHEMES[addr.scheme]
    if framing is _DEFAULT:
        framing = "length"
    elif framing not in ("length", "lines", None):
        raise ValueError(f"framing must be 'length', 'lines' or None, not {framing!r}")
    elif scheme.messages and framing != "length":
        raise ValueError(
            f"{scheme.name}: carries whole messages itself; framing={framing!r} does not apply to it"
        )
    _check_options(
        scheme, call, scheme.connect_options if call == "connect" else scheme.serve_options, options
    )
    return addr, scheme, framing, scheme.functions()


@overload
async def connect(
    address: str | Address,
    *,
    framing: Literal["length", "lines"] = ...,
    max_size: int = ...,
    timeout: float | None = ...,
    **options: Any,
) -> MessageStream: ...
@overload
async def connect(
    address: str | Address, *, framing: None, max_size: int = ..., timeout: float | None = ..., **options: Any
) -> ByteStream: ...
async def connect(
    address: str | Address,
    *,
    framing: Framing = _DEFAULT,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout: float | None = None,
    **options: Any,
) -> MessageStream | ByteStream:
    """Open a stream to the object at ``address``.

    Byte transports (stream sockets, FIFOs) come back framed as message
    streams unless ``framing=None``; message transports (datagram and
    seqpacket sockets, queues, rings) are message streams already. For a
    FIFO this is its writing end (its ``receive()`` ends at once); for a
    queue or ring, the existing object.

    Args:
        framing: ``"length"`` (4-byte big-endian prefix, the default),
            ``"lines"`` (newline-delimited, for shell tools and socat), or
            ``None`` for raw bytes. Byte transports only.
        max_size: the largest message sent or accepted.
        timeout: wait up to this many seconds for the other side to exist
            (a server listening, a queue or ring created, a FIFO with a
            reader); ``None`` fails at once if it does not.
        options: what the scheme takes besides (see ``aioipc schemes``).

    Raises:
        ValueError: a malformed address (the message shows the syntax), a
            scheme not available here, or a framing that does not apply.
        TypeError: an option the scheme does not take (the message lists those it does).
        TimeoutError: ``timeout`` ran out; the message names the address.
        OSError: as the mechanism raises it (``FileNotFoundError``,
            ``ConnectionRefusedError`` ...) when there is no ``timeout``.

    Example::

        async with await aioipc.connect("unix:/run/app.sock", timeout=5) as msgs:
            await msgs.send(b"ping")
    """
    addr, scheme, framing, module = _prepare(address, framing, "connect", options)
    if timeout is None:
        stream = await module.connect_address(addr, max_size=max_size, timeout=None, **options)
    else:
        stream = await _connect_within(module, addr, timeout, max_size, options)
    if scheme.messages or framing is None:
        return stream  # type: ignore[no-any-return]
    return frame_connected(stream, max_size, framing)


async def _connect_within(
    module: Any, address: Address, timeout: float, max_size: int, options: Mapping[str, Any]
) -> Any:
    """Retry while the other side does not exist yet, until ``timeout``, with capped backoff."""
    deadline = time.monotonic() + timeout
    delay = _FIRST_RETRY
    while True:
        remaining = deadline - time.monotonic()
        try:
            with anyio.fail_after(max(remaining, 0)):
                return await module.connect_address(address, max_size=max_size, timeout=remaining, **options)
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as exc:
            remaining = deadline - time.monotonic()
            if isinstance(exc, TimeoutError) or remaining <= 0:
                why = f": {exc}" if str(exc) and not isinstance(exc, TimeoutError) else ""
                raise TimeoutError(f"nothing answered at {address} within {timeout:g} s{why}") from exc
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_RETRY)


async def serve(
    address: str | Address,
    handler: Handler,
    *,
    framing: Framing = _DEFAULT,
    max_size: int = DEFAULT_MAX_SIZE,
    **options: Any,
) -> Server:
    """Create the object at ``address`` and call ``handler(stream)`` for what arrives.

    For sockets, one handler call per connection, concurrently; for a FIFO,
    queue or ring, one call with its receiving side. The server is
    accepting when this returns; ``async with server:`` closes it at the end.

    Args:
        framing: as for :func:`connect`: ``"length"``, ``"lines"`` or ``None``.
        max_size: the largest message accepted or sent.
        options: what the scheme takes (``mode``, ``max_connections`` ...; see ``aioipc schemes``).

    Raises:
        ValueError: a malformed address, or a scheme not available here.
        TypeError: an option the scheme does not take.
        FileExistsError, AddressInUse: the object exists (a live server is never stolen).

    Example::

        async def handler(msgs):
            async for m in msgs:
                await msgs.send(m)

        async with await aioipc.serve("unix:/tmp/echo.sock", handler) as server:
            await server.serve_forever()
    """
    addr, scheme, framing, module = _prepare(address, framing, "serve", options)
    if scheme.served_by_creating:
        stream = await module.connect_address(addr, max_size=max_size, timeout=None, create=True, **options)
        return Server.single(str(addr), handler, stream)
    server: Server = await module.serve_address(addr, handler, framing=framing, max_size=max_size, **options)
    return server
