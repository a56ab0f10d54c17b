"""The shared-memory ring: conformance, two processes, crashes, one peer per ring."""

from __future__ import annotations

import array
import asyncio
import mmap
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from helpers import check_echoed_ops_are_coroutines

import aioipc
import aioipc.shm
from aioipc._core import speedups
from aioipc.shm import Ring, RingInUse
from aioipc.testing import check_message_stream


def _loop_name() -> str:
    return "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"


def _ring_files(name: str) -> list[str]:
    base = name[1:]
    return [f for f in os.listdir("/dev/shm") if f == base or f.startswith(base + ".")]


@pytest.fixture
def ring_name(unique_name: str) -> str:
    return "/" + unique_name


async def test_ring_message_conformance(unique_name: str) -> None:
    counter = [0]

    @asynccontextmanager
    async def pair() -> AsyncIterator[tuple[Ring, Ring]]:
        counter[0] += 1
        name = f"/{unique_name}-{counter[0]}"
        async with await Ring.create(name, 4 * 2**20) as a, await Ring.attach(name) as b:
            yield a, b
        assert _ring_files(name) == []

    await check_message_stream(pair, two_way=True)


async def test_batches_views_and_limits(ring_name: str) -> None:
    async with await Ring.create(ring_name, 8192) as a, await Ring.attach(ring_name) as b:
        assert a.max_size == 8192 // 2 - 8
        with pytest.raises(aioipc.FrameTooLarge):
            await a.send_many([b"ok", b"x" * (a.max_size + 1)])
        with anyio.fail_after(5):
            # more than a lane holds: the sender waits for the receiver, nothing is torn
            messages = [bytes([i % 256]) * (i * 37 % 3000) for i in range(300)]

            async def consume() -> list[bytes]:
                got: list[bytes] = []
                while len(got) < len(messages):
                    got.extend(await b.receive_many(max_messages=7))
                return got

            async with anyio.create_task_group() as tg:
                tg.start_soon(a.send_many, messages)
                assert await consume() == messages
            await a.send_many([memoryview(array.array("i", [1, 2])), bytearray(b"ba")])
            assert await b.receive_many() == [array.array("i", [1, 2]).tobytes(), b"ba"]
            await a.send(memoryview(b"zero-copy"))
            async with b.receive_view() as view:
                assert view.readonly
                assert bytes(view) == b"zero-copy"
            # a view kept past the block cannot be used
            with pytest.raises(ValueError, match="released"):
                view[0]
            # a failing block consumes the message all the same
            await a.send(b"first")
            await a.send(b"second")
            with pytest.raises(RuntimeError):
                async with b.receive_view():
                    raise RuntimeError
            assert await b.receive() == b"second"


async def test_second_attacher_is_refused(ring_name: str) -> None:
    async with await Ring.create(ring_name, 8192) as a:
        async with await Ring.attach(ring_name):
            with pytest.raises(RingInUse, match="already has its peer"):
                await Ring.attach(ring_name)
        with pytest.raises(RingInUse, match="attached before"):
            await Ring.attach(ring_name)
        assert "creator" in repr(a)
        with pytest.raises(FileExistsError):
            await Ring.create(ring_name, 8192)
    assert _ring_files(ring_name) == []
    with pytest.raises(FileNotFoundError):
        await Ring.attach(ring_name)


async def test_attach_refuses_a_plain_segment(ring_name: str) -> None:
    async with await aioipc.shm.SharedMemory.create(ring_name, 8192):
        with pytest.raises(ValueError, match="not an aioipc ring"):
            await Ring.attach(ring_name)


ECHO = textwrap.dedent(
    """
    import sys, aioipc

    async def main():
        spin = float(sys.argv[3]) if len(sys.argv) > 3 else 100e-6
        async with await aioipc.connect(sys.argv[1], spin=spin) as ring:
            async for message in ring:
                await ring.send(message.upper())

    aioipc.run(main(), loop=sys.argv[2])
    """
)


async def test_request_response_with_a_child_process(ring_name: str, tmp_path: Path) -> None:
    script = tmp_path / "echo.py"
    script.write_text(ECHO)
    replies: list[bytes] = []
    done = asyncio.Event()

    async def handler(ring: Ring) -> None:
        for word in (b"alpha", b"", b"x" * 100_000):
            await ring.send(word)
            replies.append(await ring.receive())
        await ring.send_eof()
        done.set()

    address = f"shm:{ring_name}"
    async with await aioipc.serve(address, handler) as server:
        assert server.address == address
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), address, _loop_name())
        with anyio.fail_after(20):
            await done.wait()
            assert await proc.wait() == 0
    assert replies == [b"ALPHA", b"", b"X" * 100_000]
    assert _ring_files(ring_name) == []


WRITER = textwrap.dedent(
    """
    import os, sys, aioipc
    from aioipc.shm import Ring

    async def main():
        ring = await Ring.attach(sys.argv[1])
        big = bytes([0xAB]) * int(sys.argv[2])
        await ring.send(b"whole")
        await ring.receive()              # the parent is ready to kill us
        os.write(1, b"!")
        await ring.send(big)              # killed in the middle of this copy
        os.write(1, b"sent")
        await ring.receive()

    aioipc.run(main(), loop=sys.argv[3])
    """
)


async def test_producer_killed_mid_write_exposes_no_torn_message(ring_name: str, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    size = 24 * 2**20
    async with (
        await Ring.create(ring_name, 2 * size + 4096) as ring,
        await aioipc.shm.SharedMemory.attach(ring_name) as raw,
    ):
        lane = raw.buf[4096 + ring.capacity : 4096 + 2 * ring.capacity]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), ring_name, str(size), _loop_name(), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        try:
            with anyio.fail_after(20):
                assert await ring.receive() == b"whole"
                await ring.send(b"go")
                assert await proc.stdout.readexactly(1) == b"!"
                while lane[4096] != 0xAB:  # the copy has begun (it takes milliseconds)
                    await asyncio.sleep(0)
                proc.kill()
                assert await proc.wait() == -signal.SIGKILL
                assert await proc.stdout.read() == b"", "the send finished before the kill"
                assert 0 < bytes(lane).count(0xAB) < size, "not killed mid-write"
                with pytest.raises(aioipc.PeerDied):
                    await ring.receive()  # the half-written record was never committed
        finally:
            lane.release()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


SLEEPER = textwrap.dedent(
    """
    import os, sys, aioipc
    from aioipc.shm import Ring

    async def main():
        ring = await Ring.{how}(sys.argv[1])
        os.write(1, b"ready")
        await ring.receive()

    aioipc.run(main(), loop=sys.argv[2])
    """
)


async def test_peer_death_wakes_a_sleeping_receiver(ring_name: str, tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER.format(how="attach"))
    async with await Ring.create(ring_name, 8192) as ring:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), ring_name, _loop_name(), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        with anyio.fail_after(20):
            assert await proc.stdout.readexactly(5) == b"ready"
            receiving = asyncio.ensure_future(ring.receive())
            await asyncio.sleep(0)
            proc.kill()
            with pytest.raises(aioipc.PeerDied):
                await receiving
            await proc.wait()
            with pytest.raises(aioipc.PeerDied):
                await ring.send_many([b"x" * 3000] * 3)


async def test_stale_rings_are_removed(ring_name: str, tmp_path: Path) -> None:
    script = tmp_path / "creator.py"
    script.write_text(SLEEPER.format(how="create"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), ring_name, _loop_name(), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    async with await Ring.create(ring_name + "-live", 8192):
        with anyio.fail_after(20):
            assert await proc.stdout.readexactly(5) == b"ready"
            infos = {info.name: info for info in aioipc.shm.list_segments()}
            assert infos[ring_name].ring
            assert infos[ring_name].attached == 1
            assert infos[ring_name].mode == 0o600
            assert ring_name not in aioipc.shm.remove_stale_rings()  # its creator is alive
            proc.kill()
            await proc.wait()
        assert len(_ring_files(ring_name)) == 3  # the killed creator left its files
        removed = aioipc.shm.remove_stale_rings()
        assert ring_name in removed
        assert ring_name + "-live" not in removed
        assert _ring_files(ring_name) == []


async def test_bad_names() -> None:
    for name in ("nameless", "/a/b", "/"):
        with pytest.raises(ValueError, match="bad shared-memory name"):
            await Ring.create(name, 8192)
    with pytest.raises(ValueError, match="bad address"):
        await aioipc.connect("shm:relative")


@pytest.mark.parametrize("spin", [0.0, 100e-6])
async def test_thousands_of_round_trips_lose_no_wake_up(ring_name: str, tmp_path: Path, spin: float) -> None:
    """Without spin each side sleeps between messages: a lost wake-up would hang here (bounded)."""
    script = tmp_path / "echo.py"
    script.write_text(ECHO)
    async with await Ring.create(ring_name, 8192, spin=spin) as ring:
        address = f"shm:{ring_name}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), address, _loop_name(), str(spin)
        )
        with anyio.fail_after(30):
            for i in range(3000):
                await ring.send(b"r%d" % i)
                assert await ring.receive() == b"R%d" % i
            await ring.send_eof()
            assert await proc.wait() == 0


PERSISTER = textwrap.dedent(
    """
    import os, signal, sys, aioipc
    from aioipc.shm import Ring

    async def main():
        ring = await Ring.create(sys.argv[1], 8192, persist=True)
        await ring.send_many([b"one", b"two", b"three"])
        if sys.argv[3] == "close":
            await ring.aclose()
        else:
            os.kill(os.getpid(), signal.SIGKILL)

    aioipc.run(main(), loop=sys.argv[2])
    """
)


async def _run_persister(tmp_path: Path, ring_name: str, how: str) -> int:
    script = tmp_path / "persister.py"
    script.write_text(PERSISTER)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), ring_name, _loop_name(), how)
    with anyio.fail_after(20):
        return await proc.wait()


async def test_persisted_ring_is_drained_after_its_creator_closed(ring_name: str, tmp_path: Path) -> None:
    assert await _run_persister(tmp_path, ring_name, "close") == 0
    try:
        with anyio.fail_after(10):
            async with await Ring.attach(ring_name) as ring:
                assert [message async for message in ring] == [b"one", b"two", b"three"]
                with pytest.raises(anyio.EndOfStream):
                    await ring.receive()
                with pytest.raises(anyio.BrokenResourceError):
                    await ring.send(b"nobody reads this")
    finally:
        aioipc.shm.unlink(ring_name)
    assert _ring_files(ring_name) == []


async def test_persisted_ring_of_a_dead_creator_is_peer_died(ring_name: str, tmp_path: Path) -> None:
    assert await _run_persister(tmp_path, ring_name, "kill") == -signal.SIGKILL
    try:
        with pytest.raises(
            aioipc.PeerDied, match=f"died; remove what it left with `aioipc rm shm:{ring_name}`"
        ):
            await Ring.attach(ring_name)
    finally:
        aioipc.shm.unlink(ring_name)


async def test_an_idle_receiver_stops_spinning(ring_name: str, tmp_path: Path) -> None:
    """A receive the peer never answers spins at most ``spin`` seconds, then sleeps: no CPU burnt."""
    script = tmp_path / "echo.py"
    script.write_text(ECHO)
    async with await Ring.create(ring_name, 8192, spin=0.005) as ring:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), f"shm:{ring_name}", _loop_name()
        )
        with anyio.fail_after(20):
            await ring.send(b"up?")
            assert await ring.receive() == b"UP?"  # the peer attached and answers
        cpu = time.thread_time()
        for _ in range(3):
            with anyio.move_on_after(0.2):
                await ring.receive()  # nothing comes
        # 0.6 s of waiting; the spin windows (5 ms, then less) are a small part of it
        assert time.thread_time() - cpu < 0.1
        await ring.send_eof()
        with anyio.fail_after(20):
            assert await proc.wait() == 0


async def test_spin_is_checked_before_anything_exists(ring_name: str) -> None:
    for spin in (-1.0, 1.0):
        with pytest.raises(ValueError, match="spin"):
            await Ring.create(ring_name, 8192, spin=spin)
        assert _ring_files(ring_name) == []
    async with await Ring.create(ring_name, 8192, spin=0):
        with pytest.raises(ValueError, match="spin"):
            await Ring.attach(ring_name, spin=-1.0)
        async with await Ring.attach(ring_name, spin=0):
            pass


SENDER = textwrap.dedent(
    """
    import array, os, sys, aioipc
    from aioipc.shm import Ring

    async def main():
        ring = await Ring.attach(sys.argv[1])
        for i in range(int(sys.argv[2])):  # one send() each, and the lane never fills
            await ring.send(b"m%d" % i)
        for item in (bytearray(b"ba"), memoryview(array.array("i", [1, 2])), memoryview(b"abcdef")[::2]):
            await ring.send(item)
        try:
            await ring.send(b"x" * (ring.max_size + 1))
        except aioipc.FrameTooLarge:
            await ring.send(b"x" * ring.max_size)
        os.write(1, b"sent")
        await ring.receive()  # killed here

    aioipc.run(main(), loop=sys.argv[3])
    """
)


async def test_a_killed_sender_leaves_its_committed_messages_then_peer_died(
    ring_name: str, tmp_path: Path
) -> None:
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    count = 2000
    async with await Ring.create(ring_name, 2**20) as ring:
        largest = ring.max_size
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), ring_name, str(count), _loop_name(), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        with anyio.fail_after(20):
            assert await proc.stdout.readexactly(4) == b"sent"
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            got = [await ring.receive() for _ in range(count + 4)]
            for _ in range(2):
                with pytest.raises(aioipc.PeerDied):
                    await ring.receive()
    assert got[:count] == [b"m%d" % i for i in range(count)]
    assert got[count:] == [b"ba", array.array("i", [1, 2]).tobytes(), b"ace", b"x" * largest]


DRAINER = textwrap.dedent(
    """
    import os, sys, aioipc
    from aioipc.shm import Ring

    async def main():
        async with await Ring.attach(sys.argv[1]) as ring:
            os.write(1, b"ready")
            sys.stdin.buffer.read(1)  # reads nothing before the parent says so
            got = [message async for message in ring]
        whole = all(message == b"\\x01" * 1000 for message in got[:-1])
        os.write(1, b"%d %d %s" % (len(got), whole, got[-1]))

    aioipc.run(main(), loop=sys.argv[2])
    """
)


async def test_a_send_cancelled_at_a_full_lane_sends_nothing(ring_name: str, tmp_path: Path) -> None:
    script = tmp_path / "drainer.py"
    script.write_text(DRAINER)
    async with await Ring.create(ring_name, 8192) as ring:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            ring_name,
            _loop_name(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        with anyio.fail_after(20):
            assert await proc.stdout.readexactly(5) == b"ready"
            sent = 0
            with anyio.move_on_after(0.1) as waited:
                while True:
                    await ring.send(b"\x01" * 1000)  # the lane holds 8, then this waits for room
                    sent += 1
            assert waited.cancelled_caught
            assert sent == 8192 // 1008
            proc.stdin.write(b"g")
            await ring.send(b"\x02" * 10)  # waits until the peer drains
            await ring.send_eof()
            assert await proc.stdout.read() == b"%d 1 %s" % (sent + 1, b"\x02" * 10)
            assert await proc.wait() == 0


async def test_batches_go_in_one_call_when_they_fit(ring_name: str) -> None:
    async with await Ring.create(ring_name, 8192, spin=0) as a, await Ring.attach(ring_name) as b:
        with anyio.fail_after(5):
            with pytest.raises(ValueError, match="at least 1"):
                await b.receive_many(max_messages=0)
            await a.send_many((b"t1", bytearray(b"t2"), memoryview(b"t3")))  # a tuple, any buffers
            await a.send_many([])
            await a.send_many(message for message in (b"g1", b"g2"))  # not a list: the slow path
            assert await b.receive_many(max_messages=2) == [b"t1", b"t2"]
            assert await b.receive_many() == [b"t3", b"g1", b"g2"]
            with pytest.raises(aioipc.FrameTooLarge):
                await a.send_many([b"ok"] * 10 + [b"x" * (a.max_size + 1)])
            batch = [bytes([i]) * 50 for i in range(100)]  # more than the lane holds: it waits
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.send_many, batch)
                got: list[bytes] = []
                while len(got) < len(batch):
                    got.extend(await b.receive_many())
            assert got == batch, "the refused batch sent nothing; the waiting one all, in order"


async def test_a_record_past_its_lane_is_read_without_reading_past_the_mapping(ring_name: str) -> None:
    """A bad peer's record: the one-call paths leave it to the slow path, which stays in bounds."""
    async with await Ring.create(ring_name, 8192, spin=0) as a, await Ring.attach(ring_name) as b:
        with anyio.fail_after(5):
            await a.send(b"good")
            head = a._head
            position = head % a.capacity
            a._tx[position : position + 8] = (a.capacity - position).to_bytes(4, "little") + bytes(4)
            a._h[a._tx_head] = a._head = head + 16  # commits a record that claims the rest of the lane
            messages = await b.receive_many()
            assert messages[0] == b"good"
            if len(messages) == 1:
                messages += await b.receive_many()
            assert len(messages) == 2
            assert len(messages[1]) <= a.capacity


@pytest.mark.skipif(
    not speedups.ACTIVE, reason="the compiled RingCore's checks (Python's views stop at the end)"
)
def test_the_compiled_ring_core_refuses_lanes_outside_its_mapping() -> None:
    memory = mmap.mmap(-1, 3 * mmap.PAGESIZE)
    page, words = mmap.PAGESIZE, (8, 9, 16, 10, 17)
    core = speedups.RingCore()
    for tx, rx, capacity, indexes in (
        (page, 2 * page, 2 * page, words),  # past the end
        (page, -8, page, words),
        (page + 4, 2 * page, page, words),  # misaligned
        (page, 2 * page, 4, words),  # too small
        (page, 2 * page, page, (8, 9, 16, 10, page // 8)),  # a header word inside a lane
    ):
        with pytest.raises(ValueError):
            core._bind(memory, tx, rx, capacity, 100, indexes, 12, 64)
    core._bind(memory, page, 2 * page, page, 100, words, 12, 64)
    with pytest.raises(BufferError):
        memory.close()  # held while bound
    core._unbind()
    memory.close()


async def test_send_and_receive_are_coroutines_to_awaits_and_tasks(ring_name: str, tmp_path: Path) -> None:
    """Compiled, they are coroutines without a frame: nothing happens before the first step."""
    script = tmp_path / "echo.py"
    script.write_text(ECHO)
    async with await Ring.create(ring_name, 8192, spin=0) as ring:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), f"shm:{ring_name}", _loop_name(), "0"
        )
        with anyio.fail_after(20):
            await check_echoed_ops_are_coroutines(ring)
            await ring.send_eof()
            assert await proc.wait() == 0


@pytest.mark.parametrize("end", ["eof", "death"])
async def test_a_message_committed_between_the_receivers_two_looks_is_read_before_the_end(
    ring_name: str, end: str
) -> None:
    # The receiver looks at the peer's head (nothing new), then at its EOF flag / hang-up. A peer
    # that commits a last message and then ends between those two looks must not have it lost:
    # the interleaving is forced here, in one process, at the receiver's first look.
    async with await Ring.create(ring_name, 8192) as a, await Ring.attach(ring_name) as b:
        first_look = b._peek
        forced = []

        def peek() -> tuple[int, int, int] | None:
            record = first_look()
            if record is None and not forced:
                forced.append(True)
                assert a._put(b"last")  # committed by the compiled (or Python) fast path
                if end == "eof":
                    a._h[a._tx_eof] = 1  # what send_eof() stores after it
                else:  # the sender died: its end of the doorbell closed, and the receiver heard
                    os.close(a._peer_bell)
                    a._peer_bell = -1
                    b._bell.hung_up = True
            return record

        b._peek = peek  # type: ignore[method-assign]
        with anyio.fail_after(10):
            assert await b.receive() == b"last"
            with pytest.raises(anyio.EndOfStream if end == "eof" else aioipc.PeerDied):
                await b.receive()
        assert forced


async def test_receive_takes_no_arguments(ring_name: str) -> None:
    async with await Ring.create(ring_name, 8192) as a:
        with pytest.raises(TypeError):
            a.receive(1)  # type: ignore[call-arg]
