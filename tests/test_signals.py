"""Signal streams: fan-out, restoring the previous handler, coalescing, bad input.

Tests that deliver signals to the pytest process itself restore every
handler they touch; the rest run a small service in a child process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from types import FrameType

import anyio
import pytest
from helpers import Service, service, shell_kill

import aioipc
import aioipc.process
import aioipc.signals
from aioipc.testing import wait_until_idle

# -- in this process -------------------------------------------------------------------


@pytest.mark.usefixtures("usr_handlers")
async def test_every_receiver_gets_the_signal_and_the_python_handler_comes_back() -> None:
    seen: list[int] = []

    def python_handler(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    signal.signal(signal.SIGUSR1, python_handler)
    with anyio.fail_after(10):
        async with (
            aioipc.signals.receive(signal.SIGUSR1) as a,
            aioipc.signals.receive(signal.SIGUSR1, signal.SIGUSR2) as b,
        ):
            assert signal.getsignal(signal.SIGUSR1) is not python_handler
            aioipc.signals.send(os.getpid(), signal.SIGUSR1)
            assert await a.receive() == signal.SIGUSR1
            assert await b.receive() == signal.SIGUSR1
            aioipc.signals.send(os.getpid(), signal.SIGUSR2)
            assert await b.receive() == signal.SIGUSR2
            assert a.pending() == []
        assert signal.getsignal(signal.SIGUSR1) is python_handler
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
        assert seen == []
        os.kill(os.getpid(), signal.SIGUSR1)
        await wait_until_idle(lambda: len(seen))
        assert seen == [signal.SIGUSR1]


@pytest.mark.usefixtures("usr_handlers")
async def test_one_receiver_leaving_keeps_the_other_subscribed() -> None:
    with anyio.fail_after(10):
        async with aioipc.signals.receive(signal.SIGUSR1) as stays:
            async with aioipc.signals.receive(signal.SIGUSR1):
                pass
            os.kill(os.getpid(), signal.SIGUSR1)
            assert await stays.receive() == signal.SIGUSR1


@pytest.mark.usefixtures("usr_handlers")
async def test_deliveries_coalesce_per_receiver() -> None:
    with anyio.fail_after(10):
        async with aioipc.signals.receive(signal.SIGUSR1, signal.SIGUSR2) as sigs:
            for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1, signal.SIGUSR1):
                os.kill(os.getpid(), sig)
            await wait_until_idle(sigs.pending)
            assert sigs.pending() == [signal.SIGUSR1, signal.SIGUSR2]
            assert [await sigs.receive(), await sigs.receive()] == [signal.SIGUSR1, signal.SIGUSR2]


@pytest.mark.usefixtures("usr_handlers")
async def test_a_signal_left_pending_goes_to_the_previous_handler() -> None:
    seen: list[int] = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    with anyio.fail_after(10):
        async with aioipc.signals.receive(signal.SIGUSR2) as sigs:
            os.kill(os.getpid(), signal.SIGUSR2)
            await wait_until_idle(sigs.pending)
        assert seen == [signal.SIGUSR2]
        async with aioipc.signals.receive(signal.SIGUSR2, redeliver=False) as sigs:
            os.kill(os.getpid(), signal.SIGUSR2)
            await wait_until_idle(sigs.pending)
        assert seen == [signal.SIGUSR2]


@pytest.mark.usefixtures("usr_handlers")
async def test_receiver_is_busy_for_a_second_task_and_ends_with_its_block() -> None:
    with anyio.fail_after(10):
        async with aioipc.signals.receive(signal.SIGUSR1) as sigs:
            first = asyncio.ensure_future(sigs.receive())
            await wait_until_idle()
            with pytest.raises(anyio.BusyResourceError):
                await sigs.receive()
            os.kill(os.getpid(), signal.SIGUSR1)
            assert await first == signal.SIGUSR1
            waiting = asyncio.ensure_future(sigs.__anext__())
            await wait_until_idle()
        with pytest.raises(StopAsyncIteration):
            await waiting
        with pytest.raises(anyio.ClosedResourceError):
            await sigs.receive()
        assert [s async for s in sigs] == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
async def test_uncatchable_signals_are_refused(sig: int) -> None:
    with pytest.raises(ValueError, match="cannot be caught"):
        async with aioipc.signals.receive(signal.SIGUSR1, sig):
            pass
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


@pytest.mark.parametrize("bad", [0, 999, -3])
async def test_bad_signal_numbers_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="not a signal number"):
        async with aioipc.signals.receive(bad):
            pass


async def test_no_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one signal"):
        async with aioipc.signals.receive():
            pass


def test_off_the_main_thread_is_a_clear_error() -> None:
    errors: list[BaseException] = []

    async def subscribe() -> None:
        async with aioipc.signals.receive(signal.SIGUSR1):
            pass

    def thread_main() -> None:
        try:
            asyncio.run(subscribe())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=thread_main)
    thread.start()
    thread.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "main thread" in str(errors[0])
    assert "call_soon_threadsafe" in str(errors[0])


@pytest.mark.parametrize("pid", [0, -1, -os.getpid()])
def test_send_refuses_group_pids(pid: int) -> None:
    with pytest.raises(ValueError, match="send_group"):
        aioipc.signals.send(pid, signal.SIGTERM)


def test_send_group_refuses_negative_ids() -> None:
    with pytest.raises(ValueError, match="process group"):
        aioipc.signals.send_group(-5, signal.SIGTERM)


def test_send_to_a_dead_pid_keeps_the_os_error() -> None:
    with pytest.raises(ProcessLookupError):
        aioipc.signals.send(2**22 + 1, signal.SIGTERM)  # above pid_max's default ceiling of 2**22


async def test_send_group_reaches_every_process_of_the_group() -> None:
    """A shell leading a new group, with a ``sleep`` child: one group signal ends both."""
    proc = await aioipc.process.spawn(
        ["sh", "-c", "sleep 60 & echo $!; wait"],
        channel=False,
        stdout=aioipc.process.PIPE,
        start_new_session=True,
    )
    async with proc:
        svc = Service(proc)
        with anyio.fail_after(10):
            sleeper = int(await svc.line())
            aioipc.signals.send_group(proc.pid, signal.SIGTERM)
            assert await proc.wait() == -signal.SIGTERM
            assert await aioipc.process.wait_pid(sleeper) is None


# -- in a child process ----------------------------------------------------------------

TWO_HUP_RECEIVERS = """
    import asyncio, signal, sys
    import aioipc, aioipc.signals

    async def main():
        loop = asyncio.get_running_loop()
        python_handler_ran = asyncio.Event()

        def python_handler(signum, frame):
            loop.call_soon_threadsafe(python_handler_ran.set)

        signal.signal(signal.SIGHUP, python_handler)
        async with aioipc.signals.receive(signal.SIGHUP) as a:
            async with aioipc.signals.receive(signal.SIGHUP, signal.SIGTERM) as b:
                print("ready", flush=True)
                print("a", signal.Signals(await a.receive()).name, flush=True)
                print("b", signal.Signals(await b.receive()).name, flush=True)
        print("restored", signal.getsignal(signal.SIGHUP) is python_handler, flush=True)
        await python_handler_ran.wait()
        print("python handler ran", flush=True)

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_two_receivers_see_sighup_then_the_python_handler_is_back(tmp_path: Path) -> None:
    async with service(tmp_path, TWO_HUP_RECEIVERS) as svc:
        with anyio.fail_after(20):
            await svc.expect("ready")
            await shell_kill("HUP", svc.pid)
            await svc.expect("a SIGHUP", "b SIGHUP", "restored True")
            await shell_kill("HUP", svc.pid)
            await svc.expect("python handler ran")
            assert await svc.proc.wait() == 0


PENDING_AT_EXIT = """
    import os, signal, sys, aioipc, aioipc.signals
    from aioipc.testing import wait_until_idle

    async def main():
        for _ in range(3):
            async with aioipc.signals.receive(signal.SIGUSR1) as sigs:
                os.kill(os.getpid(), signal.SIGUSR1)
                await wait_until_idle(sigs.pending)
                assert sigs.pending() == [signal.SIGUSR1]
            # the block ends with a delivery it did not take, and SIGUSR1 is back at SIG_DFL
            assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        print("alive", flush=True)

    aioipc.run(main(), loop=sys.argv[1])
"""


async def test_a_pending_signal_is_not_redelivered_to_sig_dfl(tmp_path: Path) -> None:
    """A SIGUSR1 that arrives as the block ends does not kill the process (it did, rc 138)."""
    async with service(tmp_path, PENDING_AT_EXIT) as svc:
        with anyio.fail_after(20):
            await svc.expect("alive")
            assert await svc.proc.wait() == 0
