"""FIFOs: conformance, shell writers that come and go, no blocking open, errors."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import aioipc
import aioipc.fifo
from aioipc.testing import check_byte_stream, check_message_stream


@asynccontextmanager
async def fifo_pair(
    directory: Path, *, persistent: bool = False
) -> AsyncIterator[tuple[aioipc.fifo.FifoSendStream, aioipc.fifo.FifoReceiveStream]]:
    async with await aioipc.fifo.create(directory / "pair.fifo") as fifo:
        reader = await fifo.open_reader(persistent=persistent)
        async with reader, await fifo.open_writer(timeout=5) as writer:
            yield writer, reader


async def test_fifo_byte_stream_conformance(tmp_ipc_dir: Path) -> None:
    await check_byte_stream(lambda: fifo_pair(tmp_ipc_dir))


async def test_framed_fifo_message_conformance(tmp_ipc_dir: Path) -> None:
    @asynccontextmanager
    async def maker() -> AsyncIterator[tuple[aioipc.MessageSendStream, aioipc.MessageReceiveStream]]:
        async with fifo_pair(tmp_ipc_dir) as (w, r):
            yield aioipc.framed(w), aioipc.framed(r)

    await check_message_stream(maker)


async def test_persistent_reader_gets_every_line_from_50_shell_writers(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "log.fifo"
    async with await aioipc.fifo.create(path) as fifo, await fifo.open_reader(persistent=True) as reader:
        script = f'for i in $(seq 1 50); do echo "line $i" > "{path}"; done'
        proc = await asyncio.create_subprocess_exec("sh", "-c", script)
        data = b""
        with anyio.fail_after(20):
            while data.count(b"\n") < 50:
                data += await reader.receive()
            assert await proc.wait() == 0
        assert data.decode().splitlines() == [f"line {i}" for i in range(1, 51)]


async def test_plain_reader_waits_for_a_writer_then_sees_eof(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "once.fifo"
    async with await aioipc.fifo.create(path) as fifo, await fifo.open_reader() as reader:
        # No writer yet: a non-blocking FIFO read would say EOF at once; ours waits.
        first = asyncio.ensure_future(reader.receive())
        await aioipc.testing.wait_until_idle()
        assert not first.done()
        proc = await asyncio.create_subprocess_exec("sh", "-c", f'printf hello > "{path}"')
        with anyio.fail_after(10):
            data = await first
            while not data.endswith(b"hello"):
                data += await reader.receive()
            with pytest.raises(anyio.EndOfStream):
                await reader.receive()
            assert await proc.wait() == 0


async def test_writer_waits_for_a_reader_without_blocking_the_loop(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "wait.fifo"
    async with await aioipc.fifo.create(path):
        writer_task = asyncio.ensure_future(aioipc.fifo.open_writer(path, timeout=10))
        await aioipc.testing.wait_until_idle()
        assert not writer_task.done(), "open_writer returned with no reader"
        proc = await asyncio.create_subprocess_exec("cat", str(path), stdout=asyncio.subprocess.PIPE)
        with anyio.fail_after(10):
            async with await writer_task as writer:
                await writer.send(b"from aioipc\n")
            assert proc.stdout is not None
            assert await proc.stdout.read() == b"from aioipc\n"
            assert await proc.wait() == 0


async def test_open_writer_can_be_cancelled_and_times_out(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "nobody.fifo"
    async with await aioipc.fifo.create(path):
        task = asyncio.ensure_future(aioipc.fifo.open_writer(path))
        await aioipc.testing.wait_until_idle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            await aioipc.fifo.open_writer(path, timeout=0.05)
        with pytest.raises(OSError, match="no reader") as info:
            await aioipc.fifo.open_writer(path, wait_for_reader=False)
        assert info.value.errno == 6  # ENXIO


async def test_create_is_private_exclusive_and_removes_only_its_own(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "mine.fifo"
    old_umask = os.umask(0)
    try:
        fifo = await aioipc.fifo.create(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        await aioipc.fifo.create(path)
    other = await aioipc.fifo.create(path, exist_ok=True)
    await other.aclose()
    assert path.exists(), "a handle that did not create the FIFO removed it"
    await fifo.aclose()
    await fifo.aclose()
    assert not path.exists()


async def test_replaced_fifo_is_not_removed_by_the_old_creator(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "swap.fifo"
    fifo = await aioipc.fifo.create(path)
    path.unlink()
    os.mkfifo(path, 0o600)
    await fifo.aclose()
    assert path.exists()


async def test_a_path_that_is_not_a_fifo_is_a_clear_error(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "plain"
    path.write_text("x")
    with pytest.raises(ValueError, match="not a FIFO"):
        await aioipc.fifo.open_reader(path)
    with pytest.raises(ValueError, match="not a FIFO"):
        await aioipc.fifo.open_writer(path)
    with pytest.raises(FileExistsError):
        await aioipc.fifo.create(path, exist_ok=True)
    with pytest.raises(FileNotFoundError):
        await aioipc.fifo.open_reader(tmp_ipc_dir / "missing")
    assert path.read_text() == "x"


async def test_fifo_address_serve_and_connect(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "addr.fifo"
    got: list[bytes] = []
    done = asyncio.Event()

    async def handler(messages: aioipc.MessageReceiveStream) -> None:
        async for message in messages:
            got.append(message)
            if len(got) == 6:
                done.set()

    async with await aioipc.serve(f"fifo:{path}", handler) as server:
        assert server.address == f"fifo:{path}"
        with anyio.fail_after(10):
            for writer_no in range(2):
                async with await aioipc.connect(f"fifo:{path}") as tx:
                    for i in range(3):
                        await tx.send(b"w%d-%d" % (writer_no, i))
            await done.wait()
    assert got == [b"w%d-%d" % (w, i) for w in range(2) for i in range(3)]
    assert not path.exists()


async def test_an_unclosed_fifo_handle_warns(tmp_ipc_dir: Path) -> None:
    import gc

    fifo = await aioipc.fifo.create(tmp_ipc_dir / "forgotten.fifo")
    with pytest.warns(ResourceWarning, match="unclosed"):
        del fifo
        gc.collect()
