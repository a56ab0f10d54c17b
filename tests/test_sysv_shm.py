"""System V shared memory and semaphores, shared with a C program and with a process that dies."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import textwrap
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

pytest.importorskip("sysv_ipc")

from helpers import abandon_semaphore_waits, compile_c

from aioipc import shm
from aioipc.sysv._shm import Semaphore, SharedMemory

C_PEER = r"""
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>

int main(int argc, char **argv) {
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int shmid = shmget(key, 0, 0);
    int to_c = semget(key, 1, 0), to_py = semget(key + 1, 1, 0);
    if (shmid < 0 || to_c < 0 || to_py < 0) { perror("get"); return 1; }
    char *memory = shmat(shmid, NULL, 0);
    if (memory == (void *)-1) { perror("shmat"); return 1; }
    struct sembuf down = {0, -1, 0}, up = {0, 1, 0};
    if (semop(to_c, &down, 1) < 0) { perror("semop down"); return 1; }
    size_t n = strlen(memory);
    for (size_t i = 0; i < n; i++) memory[512 + i] = (char)toupper((unsigned char)memory[i]);
    memory[512 + n] = 0;
    if (semop(to_py, &up, 1) < 0) { perror("semop up"); return 1; }
    shmdt(memory);
    return 0;
}
"""


@pytest.fixture
def key() -> int:
    return random.randrange(1, 2**31 - 2)


def _loop_name() -> str:
    return "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"


async def test_c_program_shares_a_segment_and_semaphores(key: int, tmp_path: Path) -> None:
    binary = compile_c(tmp_path, "peer", C_PEER)
    async with (
        await SharedMemory.create(key, 4096) as memory,
        aclosing(await Semaphore.open(key, create=True, initial=0, undo=False)) as to_c,
        aclosing(await Semaphore.open(key + 1, create=True, initial=0, undo=False)) as to_py,
    ):
        assert bytes(memory.buf[:16]) == bytes(16)
        info = next(i for i in shm.list_segments() if i.key == key)
        assert (info.kind, info.size, info.mode, info.attached) == ("sysv", 4096, 0o600, 1)
        message = b"hello from python"
        memory.buf[: len(message) + 1] = message + b"\0"
        peer = await asyncio.create_subprocess_exec(str(binary), str(key))
        to_c.release()
        with anyio.fail_after(20):
            await to_py.acquire()  # the C program's semop(+1) wakes the bridge thread
            assert await peer.wait() == 0
        assert bytes(memory.buf[512 : 512 + len(message)]) == message.upper()
    with pytest.raises(FileNotFoundError):
        await SharedMemory.attach(key)
    with pytest.raises(FileNotFoundError):
        await Semaphore.open(key)


HOLDER = textwrap.dedent(
    """
    import asyncio, os, sys
    from aioipc.sysv._shm import Semaphore

    async def main():
        sem = await Semaphore.open(int(sys.argv[1]))
        await sem.acquire()
        os.write(1, b"held")
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_sem_undo_gives_a_killed_holders_unit_back(key: int, tmp_path: Path) -> None:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    async with aclosing(await Semaphore.open(key, create=True, initial=1)) as sem:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(key), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        with anyio.fail_after(20):
            assert await proc.stdout.readexactly(4) == b"held"
            assert sem.value == 0
            waiting = asyncio.ensure_future(sem.acquire())
            await asyncio.sleep(0)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            await waiting  # the kernel undid the dead holder's acquire
        sem.release()
        assert sem.value == 1


async def test_cancelled_acquire_never_leaks_a_unit(key: int) -> None:
    async with aclosing(await Semaphore.open(key, create=True, initial=0)) as sem:
        for _ in range(10):
            task = asyncio.ensure_future(sem.acquire())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sem.release()
            with anyio.fail_after(10):
                await sem.acquire()
        with pytest.raises(TimeoutError):
            await sem.acquire(timeout=0.01)
        with pytest.raises(FileExistsError):
            await Semaphore.open(key, create=True)
        sem.release()
        async with sem:
            assert sem.value == 0
        assert sem.value == 1


async def test_abandoned_waits_leave_no_thread_and_no_unit_behind(key: int) -> None:
    async with aclosing(await Semaphore.open(key, create=True, initial=0)) as sem:
        await abandon_semaphore_waits(sem)


async def test_listed_with_owner_mode_and_count(key: int) -> None:
    from aioipc import sync

    async with aclosing(await Semaphore.open(key, create=True, initial=3, mode=0o640)) as sem:
        [info] = [i for i in sync.list_semaphores() if i.kind == "sysv" and i.key == key]
        assert (info.id, info.mode, info.count) == (sem.id, 0o640, 1)
        assert info.name == f"{key:#010x}"
        assert info.uid == os.getuid()
    assert not [i for i in sync.list_semaphores() if i.kind == "sysv" and i.key == key]


def _remove_segment(key: int) -> None:
    import sysv_ipc

    try:
        sysv_ipc.remove_shared_memory(sysv_ipc.SharedMemory(key).id)
    except sysv_ipc.ExistentialError:
        pass


async def test_segment_ownership_and_views(key: int) -> None:
    try:
        memory = await SharedMemory.create(key, 100, persist=True)
        async with await SharedMemory.attach(key) as other:
            memory.buf[0] = 42
            assert other.buf[0] == 42
            assert other.attached == 2
            with pytest.raises(FileExistsError):
                await SharedMemory.create(key, 100)
        view = memory.buf[:10]
        with pytest.raises(BufferError, match="release the memoryviews"):
            await memory.aclose()
        view.release()
        await memory.aclose()
        async with await SharedMemory.create(key, 100, exist_ok=True) as again:
            assert not again.owned
            assert again.buf[0] == 42
    finally:
        _remove_segment(key)
    with pytest.raises(FileNotFoundError):
        await SharedMemory.attach(key)
    with pytest.raises(ValueError, match="bad System V key"):
        await SharedMemory.create(0, 10)
