"""Sockets: the conformance suite for every kind, on both loops, through socketpairs and real servers."""

from __future__ import annotations

import asyncio
import os
import socket
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioipc
import aioipc.sockets
import aioipc.testing
from aioipc.testing import check_byte_stream, check_message_stream


@asynccontextmanager
async def pair(kind: aioipc.sockets.Kind, max_size: int = 2**24) -> AsyncIterator[tuple[Any, Any]]:
    a, b = aioipc.sockets.socketpair(kind, max_size=max_size)
    async with a, b:
        yield a, b


@asynccontextmanager
async def served(address: str, **options: Any) -> AsyncIterator[tuple[Any, Any]]:
    """A (client, server-side) pair made by a real aioipc server and aioipc.connect()."""
    accepted: list[Any] = []
    got = anyio.Event()
    done = anyio.Event()

    async def handler(stream: Any) -> None:
        accepted.append(stream)
        got.set()
        await done.wait()

    async with await aioipc.serve(address, handler, **options) as server:
        client = await aioipc.connect(server.address, **options)
        async with client:
            with anyio.fail_after(10):
                await got.wait()
            try:
                yield client, accepted[0]
            finally:
                done.set()


async def test_unix_stream_socketpair_conformance() -> None:
    await check_byte_stream(lambda: pair("stream"), two_way=True)


async def test_seqpacket_socketpair_conformance() -> None:
    await check_message_stream(lambda: pair("seqpacket"), two_way=True, large_size=150_000)


async def test_unix_datagram_socketpair_conformance() -> None:
    await check_message_stream(lambda: pair("dgram"), two_way=True, large_size=150_000, eof=False)


async def test_unix_server_framed_conformance(tmp_ipc_dir: Path) -> None:
    await check_message_stream(lambda: served(f"unix:{tmp_ipc_dir}/s.sock"), two_way=True)


async def test_unix_server_raw_conformance(tmp_ipc_dir: Path) -> None:
    await check_byte_stream(lambda: served(f"unix:{tmp_ipc_dir}/s.sock", framing=None), two_way=True)


async def test_abstract_unix_server_conformance(unique_name: str) -> None:
    await check_message_stream(lambda: served(f"unix:@{unique_name}"), two_way=True)


async def test_seqpacket_server_conformance(tmp_ipc_dir: Path) -> None:
    await check_message_stream(
        lambda: served(f"unix+seqpacket:{tmp_ipc_dir}/s.sock"), two_way=True, large_size=150_000
    )


async def test_tcp_server_framed_conformance() -> None:
    await check_message_stream(lambda: served("tcp:127.0.0.1:0"), two_way=True, clog_bytes=64 * 2**20)


async def test_tcp_server_raw_conformance() -> None:
    await check_byte_stream(
        lambda: served("tcp:127.0.0.1:0", framing=None), two_way=True, clog_bytes=64 * 2**20
    )


@asynccontextmanager
async def udp_pair() -> AsyncIterator[tuple[Any, Any]]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    async with aioipc.sockets.from_socket(a) as x, aioipc.sockets.from_socket(b) as y:
        yield x, y


async def test_udp_connected_pair_conformance() -> None:
    """UDP keeps no order, no backpressure and no end: only the checks that apply to it."""
    await check_message_stream(udp_pair, two_way=True, large_size=60_000, eof=False, reliable=False)


async def test_unix_datagram_server_answers_each_sender(tmp_ipc_dir: Path) -> None:
    async def echo(msgs: aioipc.sockets.DatagramStream) -> None:
        async for message in msgs:
            await msgs.send(message.upper())

    async with await aioipc.serve(f"unix+dgram:{tmp_ipc_dir}/d.sock", echo) as server:
        assert oct((tmp_ipc_dir / "d.sock").stat().st_mode & 0o777) == "0o600"
        one = await aioipc.connect(server.address)
        two = await aioipc.connect(server.address)
        async with one, two:
            with anyio.fail_after(10):
                await one.send(b"one")
                await two.send(b"two")
                assert await two.receive() == b"TWO"
                assert await one.receive() == b"ONE"
                assert one.extra(aioipc.PeerCredentials).pid == os.getpid()
    assert not (tmp_ipc_dir / "d.sock").exists()


async def test_udp_server_echo() -> None:
    async def echo(msgs: aioipc.sockets.DatagramStream) -> None:
        while True:
            message, sender = await msgs.receive_from()
            await msgs.send_to(message[::-1], sender)

    async with await aioipc.serve("udp:127.0.0.1:0", echo) as server:
        assert server.address.startswith("udp:127.0.0.1:")
        async with await aioipc.connect(server.address) as msgs:
            with anyio.fail_after(10):
                await msgs.send(b"abc")
                assert await msgs.receive() == b"cba"


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
async def test_message_over_max_size_is_dropped_alone(kind: int) -> None:
    raw, other = socket.socketpair(socket.AF_UNIX, kind)
    with raw:
        async with aioipc.sockets.from_socket(other, max_size=10) as b:
            raw.send(b"x" * 11)
            raw.send(b"ok")
            with anyio.fail_after(5):
                with pytest.raises(aioipc.FrameTooLarge):
                    await b.receive()
                assert await b.receive() == b"ok"


async def test_seqpacket_empty_message_then_end() -> None:
    a, b = aioipc.sockets.socketpair("seqpacket")
    async with a, b:
        await a.send(b"")
        await a.send_eof()
        with anyio.fail_after(5):
            assert await b.receive() == b""
            with pytest.raises(anyio.EndOfStream):
                await b.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await a.send(b"after eof")


async def test_datagram_has_no_eof() -> None:
    a, b = aioipc.sockets.socketpair("dgram")
    async with a, b:
        with pytest.raises(NotImplementedError):
            await a.send_eof()


def test_socketpair_refuses_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind must be"):
        aioipc.sockets.socketpair("raw")  # type: ignore[arg-type]


async def test_bad_server_options(tmp_ipc_dir: Path) -> None:
    async def handler(stream: Any) -> None:
        pass

    with pytest.raises(TypeError, match="'allowed_uids' for a tcp: address"):
        await aioipc.serve("tcp:127.0.0.1:0", handler, allowed_uids=[0])
    with pytest.raises(TypeError, match="'ssl' for a unix: address"):
        await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", handler, ssl=object())
    with pytest.raises(ValueError, match="max_connections"):
        await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", handler, max_connections=0)
    assert not os.listdir(tmp_ipc_dir)


async def test_connect_errors(tmp_ipc_dir: Path, unique_name: str) -> None:
    with pytest.raises(FileNotFoundError):
        await aioipc.connect(f"unix:{tmp_ipc_dir}/nothing.sock")
    with pytest.raises(ConnectionRefusedError):
        await aioipc.connect(f"unix:@{unique_name}")
    with pytest.raises(ConnectionRefusedError):
        await aioipc.connect(f"unix+seqpacket:@{unique_name}")


def test_all_lists_the_public_names() -> None:
    exported = set(aioipc.sockets.__all__)
    assert all(hasattr(aioipc.sockets, name) for name in exported)
    public = {
        name
        for name, value in vars(aioipc.sockets).items()
        if not name.startswith("_")
        and isinstance(value, type | types.FunctionType)
        and value.__module__ == "aioipc.sockets"
    }
    public -= {"connect_address", "serve_address", "remove_address"}  # hooks of the scheme table
    assert public <= exported, public - exported


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_tcp_over_ipv6() -> None:
    async def echo(msgs: Any) -> None:
        async for message in msgs:
            await msgs.send(message)

    async with await aioipc.serve("tcp:[::1]:0", echo) as server:
        assert server.address.startswith("tcp:[::1]:")
        async with await aioipc.connect(server.address) as msgs:
            with anyio.fail_after(10):
                await msgs.send(b"v6")
                assert await msgs.receive() == b"v6"


def test_from_socket_refuses_a_listening_socket() -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("")
        listener.listen()
        with pytest.raises(ValueError, match="listening"):
            aioipc.sockets.from_socket(listener)


async def test_tcp_nodelay_on_both_ends() -> None:
    seen: list[int] = []

    async def handler(raw: aioipc.sockets.SocketStream) -> None:
        sock = socket.socket(fileno=raw.fileno())
        try:
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            sock.detach()
        await raw.send(b"x")

    async with (
        await aioipc.serve("tcp:127.0.0.1:0", handler, framing=None) as server,
        await aioipc.connect(server.address, framing=None) as raw,
    ):
        with anyio.fail_after(10):
            assert await raw.receive() == b"x"
        sock = socket.socket(fileno=raw.extra(aioipc.IPCAttribute.fd))
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            sock.detach()
    assert seen == [1]


async def test_unix_datagram_server_stale_and_live(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "d.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(path))
    # dead is closed: its file is stale and gets replaced

    async def sink(msgs: Any) -> None:
        async for _ in msgs:
            pass

    async with await aioipc.serve(f"unix+dgram:{path}", sink):
        with pytest.raises(aioipc.AddressInUse):
            await aioipc.serve(f"unix+dgram:{path}", sink)
    assert not path.exists()


@pytest.mark.parametrize("kind", ["seqpacket", "dgram"])
async def test_a_message_taken_by_a_cancelled_receive_is_kept(kind: aioipc.sockets.Kind) -> None:
    """The loop may read a message for a task that is cancelled before it resumes: nothing is lost."""
    a, b = aioipc.sockets.socketpair(kind)
    async with a, b:
        task = asyncio.ensure_future(b.receive())
        await aioipc.testing.wait_until_idle()
        await a.send(b"taken")
        b._handle._on_readable()  # the loop's callback reads the message for the task ...
        task.cancel()  # ... which is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await task
        with anyio.fail_after(5):
            assert await b.receive() == b"taken"


async def test_from_socket_with_a_bound_udp_socket() -> None:
    bound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bound.bind(("127.0.0.1", 0))
    port = bound.getsockname()[1]
    async with (
        aioipc.sockets.from_socket(bound) as server,
        await aioipc.connect(f"udp:127.0.0.1:{port}") as client,
    ):
        with pytest.raises(OSError, match="no destination"):
            await server.send(b"to whom?")
        with anyio.fail_after(10):
            await client.send(b"ping")
            assert await server.receive() == b"ping"
            await server.send(b"pong")  # to the last sender
            assert await client.receive() == b"pong"
