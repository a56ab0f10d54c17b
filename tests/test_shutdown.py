"""Graceful shutdown: real signals to services in child processes, and the hook rules in-process."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import anyio
import pytest
from helpers import service, shell_kill

import aioipc
import aioipc.fifo
from aioipc.shutdown import graceful_shutdown
from aioipc.testing import wait_until_idle

COUNTING_SERVICE = """
    import asyncio, signal, sys
    import aioipc, aioipc.signals
    from aioipc.shutdown import graceful_shutdown

    async def main():
        async with graceful_shutdown(timeout=5) as sd:
            sd.add_hook(print, "hook added first", flush=True)

            async def async_hook():
                await asyncio.sleep(0)
                print("async hook", flush=True)

            sd.add_hook(async_hook)
            sd.add_hook(print, "hook added last", flush=True)
            count = 0
            async with aioipc.signals.receive(signal.SIGUSR1) as usr1:
                print("ready", flush=True)
                async for _ in usr1:
                    count += 1
                    print("usr1", count, flush=True)
        print("stopped by", signal.Signals(sd.reason).name, "status", sd.exit_status, flush=True)

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_service_counts_usr1_then_stops_on_sigterm_running_hooks_in_order(tmp_path: Path) -> None:
    async with service(tmp_path, COUNTING_SERVICE) as svc:
        with anyio.fail_after(20):
            await svc.expect("ready")
            for count in range(1, 6):
                await shell_kill("USR1", svc.pid)
                await svc.expect(f"usr1 {count}")
            await shell_kill("TERM", svc.pid)
            assert await svc.rest() == [
                "hook added last",
                "async hook",
                "hook added first",
                "stopped by SIGTERM status 143",
            ]
            assert await svc.proc.wait() == 0


STUCK_HOOK_SERVICE = """
    import asyncio, sys
    import aioipc
    from aioipc.shutdown import graceful_shutdown

    async def main():
        async with graceful_shutdown(timeout=60) as sd:
            async def stuck():
                print("hook running", flush=True)
                await asyncio.Event().wait()

            sd.add_hook(stuck)
            print("ready", flush=True)
            await asyncio.Event().wait()
        print("not reached", flush=True)

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_second_sigint_during_shutdown_exits_at_once_with_130(tmp_path: Path) -> None:
    async with service(tmp_path, STUCK_HOOK_SERVICE) as svc:
        with anyio.fail_after(20):
            await svc.expect("ready")
            os.kill(svc.pid, signal.SIGINT)
            await svc.expect("hook running")
            os.kill(svc.pid, signal.SIGINT)
            assert await svc.rest() == []
            assert await svc.proc.wait() == 128 + signal.SIGINT


# -- in this process, with SIGUSR1/SIGUSR2 standing in for the shutdown and reload signals --


@pytest.mark.usefixtures("usr_handlers")
async def test_signal_cancels_a_task_group_and_the_block_ends_normally() -> None:
    events: list[str] = []

    async def worker(number: int) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append(f"worker {number} cancelled")
            raise

    async with asyncio.timeout(10):
        async with graceful_shutdown(timeout=5, signals=(signal.SIGUSR1,)) as sd:
            sd.add_hook(events.append, "hook")
            async with asyncio.TaskGroup() as tg:
                for number in range(3):
                    tg.create_task(worker(number))
                await wait_until_idle()
                os.kill(os.getpid(), signal.SIGUSR1)
                await asyncio.Event().wait()
            events.append("not reached")
    assert sorted(events[:3]) == ["worker 0 cancelled", "worker 1 cancelled", "worker 2 cancelled"]
    assert events[3:] == ["hook"]
    assert sd.triggered
    assert sd.reason == signal.SIGUSR1
    assert sd.exit_status == 128 + signal.SIGUSR1
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


async def test_hooks_run_lifo_and_a_failing_or_overrunning_hook_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def failing() -> None:
        ran.append("failing")
        raise OSError("disk gone")

    async def own_timeout() -> None:
        ran.append("own timeout")
        raise TimeoutError("the database did not answer")

    async def overrunning() -> None:
        ran.append("overrunning")
        await asyncio.Event().wait()

    async def late_async() -> None:
        ran.append("late async started")
        await asyncio.sleep(0)
        ran.append("late async finished")

    async with asyncio.timeout(10):
        async with graceful_shutdown(timeout=0.2, signals=()) as sd:
            sd.add_hook(ran.append, "first")
            sd.add_hook(late_async)
            sd.add_hook(overrunning)
            sd.add_hook(failing)
            sd.add_hook(own_timeout)
            sd.add_hook(ran.append, "last")
    assert ran == ["last", "own timeout", "failing", "overrunning", "late async started", "first"]
    assert [(hook, type(exc)) for hook, exc in sd.failures] == [
        (own_timeout, TimeoutError),
        (failing, OSError),
        (overrunning, TimeoutError),
        (late_async, TimeoutError),
    ]
    assert sd.reason is None
    assert not sd.triggered
    assert sd.exit_status == 0
    messages = [record.getMessage() for record in caplog.records]
    assert any("own_timeout failed" in m for m in messages)
    assert any("failing failed" in m for m in messages)
    assert any("overrunning overran" in m for m in messages)


async def test_an_error_in_the_block_propagates_after_the_hooks() -> None:
    ran: list[str] = []
    with pytest.raises(KeyError):
        async with graceful_shutdown(signals=()) as sd:
            sd.add_hook(ran.append, "hook")
            raise KeyError("boom")
    assert ran == ["hook"]


async def test_trigger_from_code_cancels_the_block() -> None:
    async with asyncio.timeout(10):
        async with graceful_shutdown(signals=()) as sd:
            sd.trigger()
            await asyncio.Event().wait()
    assert sd.triggered
    assert sd.reason is None


async def test_trigger_before_the_block_cancels_it_at_once() -> None:
    sd = graceful_shutdown(signals=())
    sd.trigger(signal.SIGTERM)
    async with asyncio.timeout(10):
        async with sd:
            await asyncio.Event().wait()
    assert sd.exit_status == 128 + signal.SIGTERM


async def test_a_cancellation_from_outside_is_not_absorbed() -> None:
    ran: list[str] = []
    entered = asyncio.Event()

    async def guarded() -> None:
        async with graceful_shutdown(signals=()) as sd:
            sd.add_hook(ran.append, "hook")
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(guarded())
    async with asyncio.timeout(10):
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ran == ["hook"]


@pytest.mark.usefixtures("usr_handlers")
async def test_reload_signal_calls_the_callback_and_keeps_running(caplog: pytest.LogCaptureFixture) -> None:
    reloads: list[int] = []
    reloaded = asyncio.Event()

    async def reload() -> None:
        reloads.append(len(reloads) + 1)
        reloaded.set()
        if len(reloads) == 1:
            raise ValueError("bad config")

    async with asyncio.timeout(10):
        stopping, reloading = (signal.SIGUSR1,), (signal.SIGUSR2,)
        async with graceful_shutdown(signals=stopping, reload=reload, reload_signals=reloading):
            for expected in ([1], [1, 2]):
                reloaded.clear()
                os.kill(os.getpid(), signal.SIGUSR2)
                await reloaded.wait()
                assert reloads == expected
    assert any("reload callback" in record.getMessage() for record in caplog.records)
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_a_signal_cannot_both_stop_and_reload() -> None:
    with pytest.raises(ValueError, match="both shut down and reload"):
        graceful_shutdown(reload=print, signals=(signal.SIGHUP, signal.SIGTERM))
    with pytest.raises(ValueError, match="timeout"):
        graceful_shutdown(timeout=-1)


async def test_hooks_must_be_callable() -> None:
    sd = graceful_shutdown(signals=())
    with pytest.raises(TypeError, match="callable"):
        sd.add_hook("not a function")  # type: ignore[arg-type]


@pytest.mark.usefixtures("usr_handlers")
async def test_a_served_fifo_is_drained_and_removed_on_shutdown(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "jobs"
    received: list[bytes] = []
    got_one = asyncio.Event()

    async def handler(messages: aioipc.MessageReceiveStream) -> None:
        async for message in messages:
            received.append(message)
            got_one.set()

    async with asyncio.timeout(10):
        async with graceful_shutdown(timeout=5, signals=(signal.SIGUSR1,)) as sd:
            server = await aioipc.serve(f"fifo:{path}", handler)
            sd.add_hook(server.close, grace=1)
            async with await aioipc.connect(f"fifo:{path}") as writer:
                await writer.send(b"job")
                await got_one.wait()
            os.kill(os.getpid(), signal.SIGUSR1)
            await server.serve_forever()
    assert received == [b"job"]
    assert sd.reason == signal.SIGUSR1
    assert not server.is_serving()
    assert server.connections == 0
    assert not path.exists()


@pytest.mark.usefixtures("usr_handlers")
async def test_a_unix_server_finishes_the_request_in_progress_before_closing(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "service.sock"
    working = asyncio.Event()

    async def handler(messages: aioipc.MessageStream) -> None:
        async for request in messages:
            working.set()
            await asyncio.sleep(0.2)  # the work that the shutdown lets finish
            await messages.send(b"done " + request)

    async def client() -> bytes:
        async with await aioipc.connect(f"unix:{path}") as messages:
            await messages.send(b"job")
            return bytes(await messages.receive())

    async with asyncio.timeout(10):
        async with graceful_shutdown(timeout=5, signals=(signal.SIGUSR1,)) as sd:
            server = await aioipc.serve(f"unix:{path}", handler)
            sd.add_hook(server.close, grace=5)
            reply = asyncio.ensure_future(client())  # its own task: the shutdown does not cancel it
            await working.wait()
            os.kill(os.getpid(), signal.SIGUSR1)
            await server.serve_forever()
        assert await reply == b"done job"
    assert sd.reason == signal.SIGUSR1
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        await aioipc.connect(f"unix:{path}")
