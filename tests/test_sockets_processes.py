"""Sockets between real processes: fd passing, credentials, a peer killed mid-message,
500 concurrent clients."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import aioipc
import aioipc.sockets
import aioipc.testing

CHILD = textwrap.dedent(
    """
    import os, sys, aioipc, aioipc.sockets

    async def fd_receiver(fd):
        # read a file through an fd the parent passed over a seqpacket socketpair
        import socket
        async with aioipc.sockets.from_socket(socket.socket(fileno=fd)) as msgs:
            data, fds = await msgs.receive_fds(max_fds=1)
            with open(fds[0], "rb") as f:
                await msgs.send(data + b":" + f.read())

    async def half_frame(address):
        # announce 1000 bytes, send 10, say so, then wait to be killed
        raw = await aioipc.sockets.connect_unix(address)
        await raw.send(b"\\x00\\x00\\x03\\xe8" + b"x" * 10)
        await raw.sender.flush()
        print("sent", flush=True)
        await raw.receive()

    async def sleeper(address):
        # connect, never read, wait to be killed
        raw = await aioipc.sockets.connect_unix(address)
        print("connected", flush=True)
        import anyio
        await anyio.sleep_forever()

    async def clients(address, count, messages):
        async def one(i):
            async with await aioipc.connect(address, timeout=30) as msgs:
                for j in range(messages):
                    await msgs.send(b"%d.%d" % (i, j))
                for j in range(messages):
                    assert await msgs.receive() == b"%d.%d" % (i, j)
        import anyio
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
        print("done", count * messages, flush=True)

    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "fd_receiver":
        main = fd_receiver(int(args[0]))
    elif mode == "half_frame":
        main = half_frame(args[0])
    elif mode == "sleeper":
        main = sleeper(args[0])
    else:
        main = clients(args[0], int(args[1]), int(args[2]))
    aioipc.run(main, loop=os.environ.get("LOOP", "auto"))
    """
)


def loop_name() -> str:
    return "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"


async def spawn(
    tmp_path: Path, *args: str, pass_fds: tuple[int, ...] = (), stderr: int | None = None
) -> asyncio.subprocess.Process:
    script = tmp_path / "child.py"
    if not script.exists():  # never rewrite it under a child that is starting
        script.write_text(CHILD)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        pass_fds=pass_fds,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "LOOP": loop_name()},
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_fd_passing_to_another_process(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"only through the fd")
    ours, theirs = aioipc.sockets.socketpair("seqpacket")
    async with ours:
        child_fd = theirs.fileno()
        proc = await spawn(tmp_path, "fd_receiver", str(child_fd), pass_fds=(child_fd,))
        await theirs.aclose()
        fd = os.open(secret, os.O_RDONLY)
        try:
            await ours.send_fds(b"file", [fd])
        finally:
            os.close(fd)
        with anyio.fail_after(20):
            assert await ours.receive() == b"file:only through the fd"
            assert ours.extra(aioipc.PeerCredentials).pid == os.getpid()  # socketpair: its creator
            assert await proc.wait() == 0


async def test_stream_fd_passing_and_ownership() -> None:
    a, b = aioipc.sockets.socketpair("stream")
    async with a, b:
        r, w = os.pipe()
        try:
            await a.send(b"before")
            await a.send_fds(b"with fds", [r, w])
            with anyio.fail_after(10):
                assert await b.receive(6) == b"before"
                data, fds = await b.receive_fds(max_fds=2)
            assert data == b"with fds"
            assert len(fds) == 2
            os.write(fds[1], b"through the copies")
            assert os.read(r, 100) == b"through the copies"
            for fd in fds:
                assert os.get_inheritable(fd) is False
                os.close(fd)
        finally:
            os.close(r)
            os.close(w)


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
async def test_too_many_fds_are_closed_not_leaked(kind: aioipc.sockets.Kind) -> None:
    a, b = aioipc.sockets.socketpair(kind)
    async with a, b:
        r, w = os.pipe()
        try:
            before = open_fds()
            await a.send_fds(b"three", [r, w, r])
            with anyio.fail_after(10), pytest.raises(aioipc.sockets.FdsTruncated) as info:
                await b.receive_fds(max_fds=1)
            assert info.value.data == b"three"
            assert open_fds() == before
            # a plain receive drops fds in the kernel, too
            await a.send_fds(b"dropped", [r])
            with anyio.fail_after(10):
                assert await b.receive() == b"dropped"
            assert open_fds() == before
        finally:
            os.close(r)
            os.close(w)


async def test_cancelled_receive_fds_takes_nothing() -> None:
    a, b = aioipc.sockets.socketpair("seqpacket")
    async with a, b:
        task = asyncio.ensure_future(b.receive_fds())
        await aioipc.testing.wait_until_idle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        before = open_fds()
        await a.send_fds(b"later", [0])
        with anyio.fail_after(10):
            data, fds = await b.receive_fds()
        assert data == b"later"
        assert open_fds() == before + 1
        os.close(fds[0])


async def test_send_fds_refuses_bad_input() -> None:
    a, b = aioipc.sockets.socketpair("stream")
    async with a, b:
        with pytest.raises(ValueError, match="at least one byte"):
            await a.send_fds(b"", [0])
        with pytest.raises(ValueError, match="at least one file descriptor"):
            await a.send_fds(b"x", [])
        with pytest.raises(ValueError, match="non-negative"):
            await a.send_fds(b"x", [-1])


async def test_peer_killed_mid_message(tmp_ipc_dir: Path, tmp_path: Path) -> None:
    got: list[BaseException] = []
    arrived = anyio.Event()

    async def handler(raw: aioipc.sockets.SocketStream) -> None:
        try:
            arrived.set()
            while True:
                await raw.receive()
        except Exception as exc:
            got.append(exc)

    async def framed_handler(msgs: aioipc.MessageStream) -> None:
        try:
            arrived.set()
            await msgs.receive()
        except Exception as exc:
            got.append(exc)

    for framing, handle in ((None, handler), ("length", framed_handler)):
        got.clear()
        arrived = anyio.Event()
        path = str(tmp_ipc_dir / "k.sock")
        async with await aioipc.serve(f"unix:{path}", handle, framing=framing):  # type: ignore[arg-type]
            proc = await spawn(tmp_path, "half_frame", path)
            assert proc.stdout is not None
            with anyio.fail_after(20):
                assert await proc.stdout.readline() == b"sent\n"
                await arrived.wait()
                proc.send_signal(signal.SIGKILL)
                assert await proc.wait() == -signal.SIGKILL
                while not got:
                    await asyncio.sleep(0)
        if framing is None:
            assert isinstance(got[0], anyio.EndOfStream | anyio.BrokenResourceError)
        else:  # the peer died inside a frame: a broken stream, and the framer says why
            assert isinstance(got[0], aioipc.TruncatedMessage)
            assert isinstance(got[0], anyio.BrokenResourceError)


async def test_peer_killed_with_unread_data_gives_broken_resource(tmp_ipc_dir: Path, tmp_path: Path) -> None:
    """A process that dies with data unread in its socket resets the connection (ECONNRESET)."""
    got: list[BaseException] = []
    sent = anyio.Event()

    async def handler(raw: aioipc.sockets.SocketStream) -> None:
        await raw.send(b"never read")
        await raw.sender.flush()
        sent.set()
        try:
            await raw.receive()
        except Exception as exc:
            got.append(exc)

    path = str(tmp_ipc_dir / "r.sock")
    async with await aioipc.serve(f"unix:{path}", handler, framing=None):
        proc = await spawn(tmp_path, "sleeper", path)
        assert proc.stdout is not None
        with anyio.fail_after(20):
            assert await proc.stdout.readline() == b"connected\n"
            await sent.wait()
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            while not got:
                await asyncio.sleep(0)
    assert isinstance(got[0], anyio.BrokenResourceError)
    assert isinstance(got[0].__cause__, ConnectionResetError)


async def test_500_concurrent_clients_in_4_processes(tmp_ipc_dir: Path, tmp_path: Path) -> None:
    received = 0

    async def handler(msgs: aioipc.MessageStream) -> None:
        nonlocal received
        async for message in msgs:
            received += 1
            await msgs.send(message)

    per_process, messages = 125, 10
    async with await aioipc.serve(f"unix:{tmp_ipc_dir}/many.sock", handler) as server:
        args = ("clients", server.address, str(per_process), str(messages))
        procs = [await spawn(tmp_path, *args, stderr=asyncio.subprocess.PIPE) for _ in range(4)]
        with anyio.fail_after(60):
            outputs = await asyncio.gather(*(proc.communicate() for proc in procs))
        assert [proc.returncode for proc in procs] == [0] * 4, [err for _, err in outputs]
        assert [out for out, _ in outputs] == [b"done %d\n" % (per_process * messages)] * 4
        assert received == 4 * per_process * messages
        with anyio.fail_after(10):
            while server.connections:
                await asyncio.sleep(0)
