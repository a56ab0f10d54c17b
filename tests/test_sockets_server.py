"""Socket servers: files and permissions, stale and live addresses, limits, graceful close,
failing handlers, credentials, and bad input from clients."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aioipc
import aioipc.sockets
import aioipc.testing


async def echo(msgs: Any) -> None:
    async for message in msgs:
        await msgs.send(message)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_socket_file_is_0600_and_removed_on_close(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "s.sock"
    old = os.umask(0)  # even a permissive umask does not loosen it
    try:
        server = await aioipc.serve(f"unix:{path}", echo)
    finally:
        os.umask(old)
    async with server:
        assert mode_of(path) == 0o600
        assert server.address == f"unix:{path}"
        async with await aioipc.connect(server.address) as msgs:
            with anyio.fail_after(10):
                await msgs.send(b"hi")
                assert await msgs.receive() == b"hi"
    assert not path.exists()


async def test_mode_is_exact_even_under_a_strict_umask(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "s.sock"
    old = os.umask(0o077)
    try:
        server = await aioipc.serve(f"unix+seqpacket:{path}", echo, mode=0o660)
    finally:
        os.umask(old)
    async with server:
        assert mode_of(path) == 0o660


async def test_stale_socket_file_is_replaced(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "s.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening: a leftover of a crashed server
    async with (
        await aioipc.serve(f"unix:{path}", echo) as server,
        await aioipc.connect(server.address) as msgs,
    ):
        with anyio.fail_after(10):
            await msgs.send(b"x")
            assert await msgs.receive() == b"x"


async def test_live_server_is_never_stolen(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "s.sock"
    async with await aioipc.serve(f"unix:{path}", echo) as server:
        inode = path.stat().st_ino
        with pytest.raises(aioipc.AddressInUse):
            await aioipc.serve(f"unix:{path}", echo)
        with pytest.raises(aioipc.AddressInUse):
            await aioipc.serve(f"unix+seqpacket:{path}", echo)
        assert path.stat().st_ino == inode
        async with await aioipc.connect(server.address) as msgs:
            with anyio.fail_after(10):
                await msgs.send(b"still mine")
                assert await msgs.receive() == b"still mine"


async def test_abstract_name_in_use(unique_name: str) -> None:
    async with await aioipc.serve(f"unix:@{unique_name}", echo) as server:
        assert server.address == f"unix:@{unique_name}"
        with pytest.raises(aioipc.AddressInUse):
            await aioipc.serve(f"unix:@{unique_name}", echo)


async def test_a_regular_file_is_not_replaced(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "s.sock"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        await aioipc.serve(f"unix:{path}", echo)
    assert path.read_bytes() == b"precious"


async def test_a_replaced_file_is_left_alone(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "s.sock"
    server = await aioipc.serve(f"unix:{path}", echo)
    async with server:
        path.unlink()
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(str(path))  # someone else's socket now
            inode = path.stat().st_ino
            await server.close()
            assert path.stat().st_ino == inode
    path.unlink()


async def test_persist_keeps_the_file(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "s.sock"
    async with await aioipc.serve(f"unix:{path}", echo, persist=True):
        pass
    assert stat.S_ISSOCK(path.lstat().st_mode)
    path.unlink()


async def test_peer_credentials_on_both_sides(tmp_ipc_dir: Path) -> None:
    seen: list[aioipc.PeerCredentials] = []

    async def handler(msgs: Any) -> None:
        seen.append(msgs.extra(aioipc.PeerCredentials))
        await msgs.send(b"ok")

    for scheme in ("unix", "unix+seqpacket"):
        async with (
            await aioipc.serve(f"{scheme}:{tmp_ipc_dir}/s.sock", handler) as server,
            await aioipc.connect(server.address) as msgs,
        ):
            with anyio.fail_after(10):
                assert await msgs.receive() == b"ok"
            creds = msgs.extra(aioipc.IPCAttribute.peer_credentials)
            assert creds == msgs.extra(aioipc.PeerCredentials)
            assert creds == (os.getpid(), os.getuid(), os.getgid())
    assert seen == [(os.getpid(), os.getuid(), os.getgid())] * 2


async def test_a_unix_connection_reports_its_path_and_fd_on_both_sides(tmp_ipc_dir: Path) -> None:
    path = str(tmp_ipc_dir / "s.sock")
    seen: list[tuple[str, bool]] = []

    def attributes(stream: Any) -> tuple[str, bool]:
        fd = stream.extra(aioipc.IPCAttribute.fd)
        return stream.extra(aioipc.IPCAttribute.path), stat.S_ISSOCK(os.fstat(fd).st_mode)

    async def handler(msgs: Any) -> None:
        seen.append(attributes(msgs))
        await msgs.send(b"ok")

    for options in ({}, {"idle_timeout": 60}):  # the idle watch passes them through
        async with (
            await aioipc.serve(f"unix:{path}", handler, **options) as server,
            await aioipc.connect(server.address) as msgs,
        ):
            with anyio.fail_after(10):
                assert await msgs.receive() == b"ok"
            assert attributes(msgs) == (path, True)
    assert seen == [(path, True)] * 2


async def test_tcp_has_no_peer_credentials() -> None:
    async with (
        await aioipc.serve("tcp:127.0.0.1:0", echo) as server,
        await aioipc.connect(server.address) as msgs,
    ):
        assert msgs.extra(aioipc.PeerCredentials, None) is None


async def test_allowed_uids(tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    address = f"unix:{tmp_ipc_dir}/s.sock"
    async with (
        await aioipc.serve(address, echo, allowed_uids={os.getuid() + 1}) as server,
        await aioipc.connect(server.address) as msgs,
    ):
        with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await msgs.send(b"let me in")
            await msgs.receive()
    assert "not in allowed_uids" in caplog.text
    async with (
        await aioipc.serve(address, echo, allowed_uids=[os.getuid()]) as server,
        await aioipc.connect(server.address) as msgs,
    ):
        with anyio.fail_after(10):
            await msgs.send(b"me")
            assert await msgs.receive() == b"me"


async def test_handlers_run_concurrently_and_a_failing_one_closes_only_its_connection(
    tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(msgs: Any) -> None:
        async for message in msgs:
            if message == b"boom":
                raise RuntimeError("handler bug")
            await msgs.send(message)

    async with await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", handler) as server:
        a = await aioipc.connect(server.address)
        b = await aioipc.connect(server.address)
        async with a, b:
            with anyio.fail_after(10):
                await a.send(b"1")
                await b.send(b"2")
                assert await b.receive() == b"2"
                assert await a.receive() == b"1"
                assert server.connections == 2
                await a.send(b"boom")
                with pytest.raises(anyio.EndOfStream):
                    await a.receive()
                await b.send(b"still here")
                assert await b.receive() == b"still here"
                while server.connections != 1:  # the failed handler's task is ending
                    await asyncio.sleep(0)
    assert "handler bug" in caplog.text


async def test_max_connections_holds_extra_clients_in_the_backlog(tmp_ipc_dir: Path) -> None:
    release = anyio.Event()
    started: list[int] = []

    async def handler(msgs: Any) -> None:
        started.append(1)
        await msgs.send(b"served")
        await release.wait()

    async with await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", handler, max_connections=2) as server:
        clients = [await aioipc.connect(server.address) for _ in range(3)]
        try:
            with anyio.fail_after(10):
                assert await clients[0].receive() == b"served"
                assert await clients[1].receive() == b"served"
                third = asyncio.ensure_future(clients[2].receive())
                await aioipc.testing.wait_until_idle(lambda: len(started))
                assert not third.done()
                assert server.connections == 2
                release.set()
                assert await third == b"served"
        finally:
            for client in clients:
                await client.aclose()


async def test_graceful_close_waits_then_cancels(tmp_ipc_dir: Path) -> None:
    finished: list[bytes] = []
    cancelled: list[bytes] = []

    async def handler(msgs: Any) -> None:
        name = await msgs.receive()
        try:
            if name == b"quick":
                with pytest.raises(anyio.EndOfStream):
                    await msgs.receive()  # ends when its client closes
            else:
                await anyio.sleep_forever()
            finished.append(name)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    server = await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", handler)
    quick = await aioipc.connect(server.address)
    slow = await aioipc.connect(server.address)
    async with slow:
        await quick.send(b"quick")
        await slow.send(b"slow")
        with anyio.fail_after(20):
            while server.connections < 2:
                await asyncio.sleep(0)
            closing = asyncio.ensure_future(server.close(grace=2))
            await aioipc.testing.wait_until_idle()
            assert not server.is_serving()
            with pytest.raises(FileNotFoundError):
                await aioipc.connect(server.address)  # stopped accepting, file gone
            await quick.aclose()  # the quick handler ends within the grace period
            await closing
    assert finished == [b"quick"]
    assert cancelled == [b"slow"]
    assert server.connections == 0


async def test_close_cancels_handlers_as_a_task_group_does(tmp_ipc_dir: Path) -> None:
    """Level-triggered and shield-respecting: a shielded goodbye still goes out, and a handler
    that swallows one cancellation is cancelled again at its next wait."""
    swallowed: list[bytes] = []

    async def handler(msgs: Any) -> None:
        name = await msgs.receive()
        await msgs.send(b"ready")
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            if name == b"stubborn":
                swallowed.append(name)
                await anyio.sleep_forever()  # cancelled again, or close() would never return
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # a cancellation that ignored the shield lands here
                await msgs.send(b"goodbye")
            raise

    server = await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", handler)
    async with (
        server,  # closed again (idempotent) if the test fails before its close
        await aioipc.connect(server.address) as polite,
        await aioipc.connect(server.address) as stubborn,
    ):
        with anyio.fail_after(10):
            for client, name in ((polite, b"polite"), (stubborn, b"stubborn")):
                await client.send(name)
                assert await client.receive() == b"ready"
            await server.close()
            assert await polite.receive() == b"goodbye"
            with pytest.raises(anyio.EndOfStream):
                await stubborn.receive()
    assert swallowed == [b"stubborn"]
    assert server.connections == 0


async def test_frame_too_large_closes_only_that_connection(
    tmp_ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BaseException] = []

    async def handler(msgs: Any) -> None:
        try:
            async for message in msgs:
                await msgs.send(message)
        except Exception as exc:
            errors.append(exc)
            raise

    async with await aioipc.serve(f"unix:{tmp_ipc_dir}/s.sock", handler, max_size=1024) as server:
        good = await aioipc.connect(server.address)
        async with good:
            for attack in (b"\x80\x00\x00\x00", b"\x00\x00\x00\x10short"):
                bad = await aioipc.sockets.connect_unix(server.address.removeprefix("unix:"))
                async with bad:
                    await bad.send(attack)  # 2 GiB announced / garbage then a close mid-frame
                    if attack.endswith(b"short"):
                        await bad.send_eof()
                    with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await bad.receive()
                with anyio.fail_after(10):
                    await good.send(b"served")
                    assert await good.receive() == b"served"
    assert [type(e) for e in errors] == [aioipc.FrameTooLarge, aioipc.TruncatedMessage]
