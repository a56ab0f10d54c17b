"""Addresses, ObjectStream codecs, aioipc.run, the public surface."""

from __future__ import annotations

import asyncio
import importlib
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

import aioipc
from aioipc import Address, parse_address
from aioipc._core.schemes import SCHEMES
from aioipc.testing import check_message_stream


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/app.sock", Address("unix", path="/run/app.sock")),
        ("unix:@name", Address("unix", path="@name")),
        ("unix+dgram:/x", Address("unix+dgram", path="/x")),
        ("unix+seqpacket:/x", Address("unix+seqpacket", path="/x")),
        ("tcp:127.0.0.1:8080", Address("tcp", host="127.0.0.1", port=8080)),
        ("udp:[::1]:0", Address("udp", host="::1", port=0)),
        ("fifo:relative/path", Address("fifo", path="relative/path")),
        ("mq:/jobs", Address("mq", path="/jobs")),
        ("sysvmq:0x1234", Address("sysvmq", key=0x1234)),
        ("sysvmq:42", Address("sysvmq", key=42)),
        ("sysvmq:/etc/hosts#7", Address("sysvmq", path="/etc/hosts", proj=7)),
        ("shm:/ring", Address("shm", path="/ring")),
    ],
)
def test_parse_and_format_round_trip(text: str, expected: Address) -> None:
    address = parse_address(text)
    assert address == expected
    assert parse_address(str(address)) == address


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("nope:/x", "unknown scheme"),
        ("/just/a/path", "no scheme"),
        ("unix:", "nothing after"),
        ("tcp:localhost", "host:port"),
        ("tcp:localhost:99999", "port must be"),
        ("mq:noslash", "one '/'"),
        ("shm:/a/b", "one '/'"),
        ("sysvmq:/p#0", "proj from 1 to 255"),
        ("sysvmq:zz", "decimal or 0x-hex"),
        ("unix:@", "abstract name"),
    ],
)
def test_bad_addresses_are_clear_value_errors(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_address(text)
    scheme = SCHEMES.get(text.partition(":")[0])
    if scheme is None:
        assert "schemes: unix" in str(info.value)
    else:  # the error shows how an address of that scheme is written
        assert f"expected {scheme.syntax}" in str(info.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("tcp:h:\u00b2", "port must be a number"),  # a superscript two: str.isdigit() says yes, int() says no
        ("sysvmq:/p#\u00b2", "proj from 1 to 255"),
        ("sysvmq:\u00b2", "decimal or 0x-hex"),
        ("unix:/" + "x" * 107, "at most 107 bytes"),
        ("unix:@" + "x" * 108, "at most 108 bytes"),
    ],
)
def test_odd_digits_and_long_paths_are_value_errors_with_the_syntax(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_address(text)
    assert "expected " in str(info.value)


def test_an_address_that_is_not_a_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="an address is a str"):
        parse_address(42)  # type: ignore[arg-type]


async def test_bad_framing_is_refused() -> None:
    with pytest.raises(ValueError, match="framing must be"):
        await aioipc.connect("fifo:/nonexistent", framing="bogus")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="carries whole messages"):
        await aioipc.connect("mq:/nonexistent", framing=None)
    with pytest.raises(ValueError, match="carries whole messages"):
        await aioipc.connect("mq:/nonexistent", framing="lines")


@pytest.mark.parametrize(
    ("call", "address", "option", "takes"),
    [
        ("connect", "mq:/nonexistent", "color", "read, write"),
        ("connect", "unix:/nonexistent", "ssl", "framing, max_size, timeout"),
        ("serve", "tcp:127.0.0.1:0", "allowed_uids", "max_connections"),
        ("serve", "fifo:/nonexistent", "max_connections", "mode"),
    ],
)
async def test_an_option_the_scheme_does_not_take_is_a_type_error_naming_it(
    call: str, address: str, option: str, takes: str
) -> None:
    async def handler(stream: object) -> None:
        pass

    with pytest.raises(TypeError, match=f"unexpected option '{option}'") as info:
        if call == "connect":
            await aioipc.connect(address, **{option: 1})
        else:
            await aioipc.serve(address, handler, **{option: 1})
    scheme = address.partition(":")[0]
    assert f"{scheme}: takes" in str(info.value)
    assert takes in str(info.value)


def test_every_scheme_module_provides_what_the_table_names() -> None:
    for scheme in SCHEMES.values():
        try:
            module = scheme.functions()
        except ValueError:
            continue  # its extra is not installed
        if scheme.connect_options is not None:
            assert callable(module.connect_address), scheme.name
        if scheme.serve_options is not None and not scheme.served_by_creating:
            assert callable(module.serve_address), scheme.name
        if scheme.removable:
            assert callable(module.remove_address), scheme.name


@asynccontextmanager
async def object_pair(codec: str) -> AsyncIterator[tuple[aioipc.ObjectStream, aioipc.ObjectStream]]:
    r, w = aioipc.pipe()
    async with (
        aioipc.ObjectStream(aioipc.framed(w), codec) as tx,
        aioipc.ObjectStream(aioipc.framed(r), codec) as rx,
    ):
        yield tx, rx


@pytest.mark.parametrize("codec", ["json", "msgpack", "pickle"])
async def test_object_stream_codecs_round_trip(codec: str) -> None:
    async with object_pair(codec) as (tx, rx):
        value = {"op": "ping", "n": [1, 2, 3], "text": "héllo"}
        await tx.send(value)
        assert await rx.receive() == value


async def test_object_stream_bad_data_is_a_protocol_error_and_the_stream_goes_on() -> None:
    r, w = aioipc.pipe()
    async with aioipc.framed(w) as raw_tx, aioipc.ObjectStream(aioipc.framed(r)) as rx:
        await raw_tx.send(b"{not json")
        await raw_tx.send(b'{"ok": true}')
        with pytest.raises(aioipc.ProtocolError, match="cannot decode"):
            await rx.receive()
        assert await rx.receive() == {"ok": True}


def test_unknown_codec_and_pickle_only_by_name() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        aioipc.ObjectStream(None, codec="yaml")
    assert type(aioipc.ObjectStream(None).codec).__name__ == "_Json"


async def test_object_stream_passes_message_conformance() -> None:
    class Identity:
        def encode(self, obj: bytes) -> bytes:
            return obj

        def decode(self, data: bytes) -> bytes:
            return data

    @asynccontextmanager
    async def maker() -> AsyncIterator[tuple[aioipc.ObjectStream, aioipc.ObjectStream]]:
        r, w = aioipc.pipe()
        tx, rx = (
            aioipc.ObjectStream(aioipc.framed(w), Identity()),
            aioipc.ObjectStream(aioipc.framed(r), Identity()),
        )
        async with tx, rx:
            yield tx, rx

    await check_message_stream(maker)


def test_run_picks_the_loop() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert aioipc.run(loop_module(), loop="uvloop").startswith("uvloop")
    assert aioipc.run(loop_module(), loop="asyncio").startswith("asyncio")
    assert aioipc.run(loop_module()).startswith("uvloop")  # auto: uvloop when installed
    coro = loop_module()
    with pytest.raises(ValueError, match="loop must be"):
        aioipc.run(coro, loop="trio")  # type: ignore[arg-type]


async def test_frame_too_large_is_refused_before_sending() -> None:
    r, w = aioipc.pipe()
    async with aioipc.framed(w, max_size=10) as tx, aioipc.framed(r, max_size=100) as rx:
        with pytest.raises(aioipc.FrameTooLarge):
            await tx.send(b"x" * 11)
        await tx.send(b"fits")
        assert await rx.receive() == b"fits"


async def test_oversize_header_breaks_the_receiving_stream() -> None:
    r, w = aioipc.pipe()
    async with w, aioipc.framed(r, max_size=1024) as rx:
        await w.send(b"\x7f\xff\xff\xff garbage")
        with anyio.fail_after(5), pytest.raises(aioipc.FrameTooLarge):
            await rx.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await rx.receive()


def test_error_tree() -> None:
    assert issubclass(aioipc.FrameTooLarge, aioipc.IPCError)
    assert issubclass(aioipc.PeerDied, anyio.BrokenResourceError)
    assert issubclass(aioipc.AddressInUse, OSError)
    assert aioipc.AddressInUse("unix:/x").errno == 98


PUBLIC_MODULES = [
    "aioipc",
    "aioipc.pipes",
    "aioipc.fifo",
    "aioipc.testing",
    "aioipc.signals",
    "aioipc.shutdown",
    "aioipc.process",
    "aioipc.sockets",
    "aioipc.mq",
    "aioipc.sysv",
    "aioipc.shm",
    "aioipc.sync",
    "aioipc.dbus",
    "aioipc.systemd",
    "aioipc.files",
    "aioipc.spool",
    "aioipc.rpc",
    "aioipc.pubsub",
]


SCHEME_HOOKS = {"connect_address", "serve_address", "remove_address"}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_matches_what_each_public_module_exports(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert all(hasattr(module, n) for n in exported), exported - set(dir(module))
    defined_here = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and not isinstance(v, types.ModuleType)
        and getattr(v, "__module__", name) == name
        and (callable(v) or isinstance(v, type))
    }
    defined_here -= SCHEME_HOOKS  # the scheme table calls these; users call aioipc.connect/serve
    assert defined_here <= exported, f"public but not in __all__: {defined_here - exported}"


async def test_framed_send_of_a_multibyte_memoryview_counts_bytes() -> None:
    import array

    r, w = aioipc.pipe()
    async with aioipc.framed(w) as tx, aioipc.framed(r) as rx:
        numbers = array.array("i", [1, 2, 3])
        await tx.send(memoryview(numbers))  # type: ignore[arg-type]
        assert await rx.receive() == numbers.tobytes()
