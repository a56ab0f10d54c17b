"""POSIX shared-memory segments and mapped files, shared with another process."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import aioipc.shm
from aioipc.shm import SharedMemory, map_file

CHILD = textwrap.dedent(
    """
    import sys, asyncio, aioipc.shm

    async def main():
        if sys.argv[1] == "segment":
            shm = await aioipc.shm.SharedMemory.attach(sys.argv[2])
        else:
            shm = await aioipc.shm.map_file(sys.argv[2])
        async with shm:
            shm.buf[:5] = bytes(shm.buf[:5]).upper()

    asyncio.run(main())
    """
)


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def _run_child(tmp_path: Path, kind: str, target: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), kind, target)
    with anyio.fail_after(20):
        assert await proc.wait() == 0


async def test_segment_shared_with_a_child(unique_name: str, tmp_path: Path) -> None:
    name = "/" + unique_name
    path = "/dev/shm/" + unique_name
    async with await SharedMemory.create(name, 10000) as shm:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert shm.size == 10000
        assert bytes(shm.buf[:8]) == bytes(8)
        shm.buf[:5] = b"hello"
        await _run_child(tmp_path, "segment", name)
        assert bytes(shm.buf[:5]) == b"HELLO"  # the child attached, wrote, closed: nothing removed
        assert _exists(path)
        info = next(i for i in aioipc.shm.list_segments() if i.name == name)
        assert (info.kind, info.size, info.mode, info.ring) == ("posix", 10000, 0o600, False)
        with pytest.raises(FileExistsError):
            await SharedMemory.create(name, 10)
        async with await SharedMemory.create(name, 100, exist_ok=True) as again:
            assert not again.owned
            assert bytes(again.buf[:5]) == b"HELLO"
        with pytest.raises(ValueError, match="under"):
            await SharedMemory.create(name, 20000, exist_ok=True)
    assert not _exists(path)
    with pytest.raises(FileNotFoundError):
        await SharedMemory.attach(name)


async def test_mode_persist_and_unlink(unique_name: str) -> None:
    name = "/" + unique_name
    async with await SharedMemory.create(name, 64, mode=0o640, persist=True):
        assert stat.S_IMODE(os.stat("/dev/shm/" + unique_name).st_mode) == 0o640
    async with await SharedMemory.attach(name) as shm:
        assert shm.size == 64
    aioipc.shm.unlink(name)
    with pytest.raises(FileNotFoundError):
        aioipc.shm.unlink(name)


async def test_close_refuses_while_a_view_is_alive(unique_name: str) -> None:
    shm = await SharedMemory.create("/" + unique_name, 64)
    view = memoryview(shm.buf)
    with pytest.raises(BufferError, match="release the memoryviews"):
        await shm.aclose()
    shm.buf[0] = 7  # still usable
    view.release()
    await shm.aclose()
    await shm.aclose()
    with pytest.raises(ValueError, match="released"):
        shm.buf[0]


async def test_mapped_file_shared_with_a_child(tmp_path: Path) -> None:
    path = tmp_path / "state"
    async with await map_file(path, 4096) as mapped:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        mapped.buf[:5] = b"shmem"
        await _run_child(tmp_path, "file", str(path))
        assert bytes(mapped.buf[:5]) == b"SHMEM"
    assert path.read_bytes()[:5] == b"SHMEM"  # the file stays, and holds the state
    async with await map_file(path) as again:
        assert again.size == 4096
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        await map_file(tmp_path / "fifo")
    with pytest.raises(IsADirectoryError):
        await map_file(tmp_path)


async def test_map_file_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    link, target = tmp_path / "counters", tmp_path / "victim"
    proc = await asyncio.create_subprocess_exec("ln", "-s", str(target), str(link))
    with anyio.fail_after(10):
        assert await proc.wait() == 0  # planted by another program
    with pytest.raises(OSError, match="symbolic link") as info:
        await map_file(link, 4096)
    assert info.value.errno == errno.ELOOP
    assert not target.exists()  # neither created nor extended to 4096 bytes
    target.write_bytes(b"precious")
    with pytest.raises(OSError, match="symbolic link"):
        await map_file(link, 4096)
    assert target.read_bytes() == b"precious"


async def test_map_file_creates_with_exactly_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    old = os.umask(0o077)
    try:
        async with await map_file(path, 16, mode=0o640):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    finally:
        os.umask(old)
