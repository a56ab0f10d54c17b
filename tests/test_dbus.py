"""D-Bus against a private dbus-daemon: calls, errors, signals, exports, and tools we did not write."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from dbus_fast import Message
from dbus_fast.annotations import DBusStr, DBusUInt32
from helpers import Daemon

import aioipc
import aioipc.dbus
from aioipc.dbus import DBusError, RequestNameReply, ServiceInterface, dbus_method, dbus_property, dbus_signal

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("dbus-daemon", "dbus-send", "gdbus")),
    reason="needs dbus-daemon, dbus-send and gdbus",
)

DAEMON = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
IFACE = "org.example.Test"
TIMEOUT = 10


class Echo(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(IFACE)
        self.release = asyncio.Event()
        self.hanging = asyncio.Event()
        self.greeting = "hello"

    @dbus_method()
    def Echo(self, text: DBusStr) -> DBusStr:
        return text + "!"

    @dbus_method()
    async def Hang(self) -> DBusStr:
        self.hanging.set()
        await self.release.wait()
        return "released"

    @dbus_method()
    def Fail(self):  # type: ignore[no-untyped-def]  # no out arguments: no return annotation
        raise DBusError("org.example.Test.Error.Nope", "nope, on purpose")

    @dbus_method()
    def Crash(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in the service")

    @dbus_signal()
    def Ticked(self, count: int) -> DBusUInt32:
        return count

    @dbus_property()
    def Greeting(self) -> DBusStr:
        return self.greeting

    @Greeting.setter
    def Greeting(self, value: DBusStr) -> None:
        self.greeting = value


async def run_tool(daemon: Daemon, *argv: str) -> str:
    """Run a D-Bus command-line tool on the private bus as its session bus; return its stdout.

    (``gdbus --address`` would open a peer-to-peer connection that never says Hello to the daemon.)
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": daemon.address},
    )
    try:
        with anyio.fail_after(TIMEOUT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_list_names_through_call(daemon: Daemon) -> None:
    async with await aioipc.dbus.connect(daemon.address) as bus:
        assert bus.unique_name.startswith(":")
        [names] = await bus.call(*DAEMON, "ListNames", timeout=TIMEOUT)
        assert "org.freedesktop.DBus" in names
        assert bus.unique_name in names
        listed = await aioipc.dbus.list_names(bus)
        assert listed[0] == "org.freedesktop.DBus"
        assert set(listed) == set(names)


async def test_error_reply_carries_the_dbus_error_name(daemon: Daemon) -> None:
    async with await aioipc.dbus.connect(daemon.address) as bus:
        with pytest.raises(DBusError) as caught:
            await bus.call("org.example.Nobody", "/", IFACE, "Echo", "s", ["x"], timeout=TIMEOUT)
        assert caught.value.name == "org.freedesktop.DBus.Error.ServiceUnknown"
        assert isinstance(caught.value, aioipc.IPCError)
        assert "org.example.Nobody" in str(caught.value)


async def test_bad_arguments_are_refused_before_sending(daemon: Daemon) -> None:
    async with await aioipc.dbus.connect(daemon.address) as bus:
        with pytest.raises(ValueError):
            await bus.call(*DAEMON, "GetNameOwner", "s", [1, 2])
        with pytest.raises(TypeError):
            await bus.call(*DAEMON[:1], "not a path", DAEMON[2], "ListNames")
        with pytest.raises(TypeError):
            bus.signals(interface="no dots")
        with pytest.raises(ValueError):
            bus.signals(max_buffer=0)
        assert bus.message_bus._method_return_handlers == {}
        [names] = await bus.call(*DAEMON, "ListNames", timeout=TIMEOUT)
        assert bus.unique_name in names


async def test_connect_to_a_missing_bus_is_a_clear_oserror(tmp_ipc_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await aioipc.dbus.connect(f"unix:path={tmp_ipc_dir / 'none'}", timeout=TIMEOUT)


async def test_gdbus_calls_an_exported_object(daemon: Daemon, unique_name: str) -> None:
    name = "org.example." + unique_name.replace("-", "_")
    async with await aioipc.dbus.connect(daemon.address) as bus:
        await bus.export("/echo", Echo())
        assert await bus.request_name(name) is RequestNameReply.PRIMARY_OWNER
        out = await run_tool(
            daemon,
            "gdbus", "call", "--session", "--dest", name,
            "--object-path", "/echo", "--method", f"{IFACE}.Echo", "hello",
        )  # fmt: skip
        assert out.strip() == "('hello!',)"
        introspected = await run_tool(
            daemon, "gdbus", "introspect", "--session", "--dest", name, "--object-path", "/echo"
        )
        assert "Echo" in introspected
        assert "Ticked" in introspected


async def test_proxy_and_error_from_an_exported_method(daemon: Daemon) -> None:
    async with await aioipc.dbus.connect(daemon.address) as service:
        await service.export("/echo", Echo())
        async with await aioipc.dbus.connect(daemon.address) as client:
            echo = await client.proxy(service.unique_name, "/echo", IFACE, timeout=TIMEOUT)
            assert await echo.Echo("hi") == "hi!"
            with pytest.raises(DBusError) as caught:
                await echo.Fail()
            assert caught.value.name == "org.example.Test.Error.Nope"
            assert caught.value.text == "nope, on purpose"
            with pytest.raises(DBusError) as caught:
                await echo.Crash()
            assert caught.value.name == "com.dubstepdish.dbus.next.ServiceError"
            assert "a bug" not in str(caught.value)  # the caller learns the type, not the details
            with pytest.raises(AttributeError):
                echo.Missing  # noqa: B018
            assert await echo.get_property("Greeting") == "hello"
            await echo.set_property("Greeting", "hi")
            assert await echo.get_property("Greeting") == "hi"
            with pytest.raises(AttributeError):
                await echo.get_property("Missing")
            with pytest.raises(ValueError, match=IFACE):
                await client.proxy(service.unique_name, "/echo", "org.example.Other", timeout=TIMEOUT)


async def test_call_timeout_then_the_bus_still_works(daemon: Daemon) -> None:
    echo = Echo()
    async with await aioipc.dbus.connect(daemon.address) as service:
        await service.export("/echo", echo)
        async with await aioipc.dbus.connect(daemon.address) as client:
            with pytest.raises(TimeoutError):
                await client.call(service.unique_name, "/echo", IFACE, "Hang", timeout=0.1)
            assert client.message_bus._method_return_handlers == {}
            echo.release.set()
            [reply] = await client.call(
                service.unique_name, "/echo", IFACE, "Echo", "s", ["x"], timeout=TIMEOUT
            )
            assert reply == "x!"


async def test_request_name_is_exclusive_by_default(daemon: Daemon, unique_name: str) -> None:
    name = "org.example." + unique_name.replace("-", "_")
    async with await aioipc.dbus.connect(daemon.address) as first:
        assert await first.request_name(name) is RequestNameReply.PRIMARY_OWNER
        assert await first.request_name(name) is RequestNameReply.ALREADY_OWNER
        async with await aioipc.dbus.connect(daemon.address) as second:
            with pytest.raises(aioipc.AddressInUse):
                await second.request_name(name)
            assert await second.request_name(name, queue=True) is RequestNameReply.IN_QUEUE
            await first.release_name(name)
            [owner] = await second.call(*DAEMON, "GetNameOwner", "s", [name], timeout=TIMEOUT)
            assert owner == second.unique_name


async def test_signals_from_gdbus_emit_and_dbus_send(daemon: Daemon) -> None:
    async with (
        await aioipc.dbus.connect(daemon.address) as bus,
        aioipc.dbus.signals(bus, interface=IFACE) as sigs,
    ):
        await run_tool(
            daemon,
            "gdbus", "emit", "--session", "--object-path", "/from/gdbus",
            "--signal", f"{IFACE}.Said", "hello", "42",
        )  # fmt: skip
        await run_tool(
            daemon,
            "dbus-send", "--session", "--type=signal", "/from/dbus_send",
            f"{IFACE}.Said", "string:hi", "uint32:7",
        )  # fmt: skip
        with anyio.fail_after(TIMEOUT):
            first = await sigs.receive()
            second = await sigs.receive()
        assert (first.path, first.interface, first.member, first.body) == (
            "/from/gdbus",
            IFACE,
            "Said",
            ["hello", 42],
        )
        assert (second.path, second.body, second.signature) == ("/from/dbus_send", ["hi", 7], "su")
        assert first.sender.startswith(":")
        assert first.sender != second.sender


async def test_signals_from_an_exported_object_and_emit(daemon: Daemon) -> None:
    echo = Echo()
    async with await aioipc.dbus.connect(daemon.address) as service:
        await service.export("/echo", echo)
        async with await aioipc.dbus.connect(daemon.address) as client:
            async with client.signals(sender=service.unique_name, interface=IFACE) as sigs:
                echo.Ticked(3)
                await service.emit("/echo", IFACE, "Direct", "s", ["to you"], destination=client.unique_name)
                with anyio.fail_after(TIMEOUT):
                    ticked = await sigs.receive()
                    direct = await sigs.receive()
            assert (ticked.member, ticked.path, ticked.body) == ("Ticked", "/echo", [3])
            assert (direct.member, direct.body) == ("Direct", ["to you"])


async def test_well_known_sender_is_followed_to_its_owner(daemon: Daemon, unique_name: str) -> None:
    name = "org.example." + unique_name.replace("-", "_")
    async with (
        await aioipc.dbus.connect(daemon.address) as listener,
        await aioipc.dbus.connect(daemon.address) as owner,
        await aioipc.dbus.connect(daemon.address) as other,
        listener.signals(interface=IFACE) as everything,
        listener.signals(sender=name, interface=IFACE) as from_name,
    ):
        await owner.request_name(name)
        for bus in (other, owner):
            await bus.emit("/x", IFACE, "Hi", "s", [bus.unique_name])
            with anyio.fail_after(TIMEOUT):
                # `everything` and `from_name` see each message in the same pass.
                assert (await everything.receive()).body == [bus.unique_name]
        with anyio.fail_after(TIMEOUT):
            got = await from_name.receive()
        assert got.sender == owner.unique_name
        assert got.body == [owner.unique_name]


async def test_match_rule_is_removed_on_exit(daemon: Daemon) -> None:
    async with (
        await aioipc.dbus.connect(daemon.address) as listener,
        await aioipc.dbus.connect(daemon.address) as emitter,
    ):
        async with listener.signals(interface=IFACE, member="First"):
            pass
        seen: list[str | None] = []

        def record(msg: Message) -> None:
            seen.append(msg.member)

        listener.message_bus.add_message_handler(record)
        async with listener.signals(interface=IFACE, member="Second") as second:
            # One emitter's signals are routed in order: "First" would arrive before "Second".
            await emitter.emit("/x", IFACE, "First")
            await emitter.emit("/x", IFACE, "Second")
            with anyio.fail_after(TIMEOUT):
                assert (await second.receive()).member == "Second"
        assert "First" not in seen


async def test_slow_consumer_keeps_the_newest_and_counts_drops(daemon: Daemon) -> None:
    async with (
        await aioipc.dbus.connect(daemon.address) as listener,
        await aioipc.dbus.connect(daemon.address) as emitter,
        listener.signals(interface=IFACE, max_buffer=3) as small,
        listener.signals(interface=IFACE) as large,
    ):
        for i in range(10):
            await emitter.emit("/x", IFACE, "N", "u", [i])
        with anyio.fail_after(TIMEOUT):
            assert [(await large.receive()).body[0] for _ in range(10)] == list(range(10))
            assert [(await small.receive()).body[0] for _ in range(3)] == [7, 8, 9]
        assert small.dropped == 7
        assert large.dropped == 0


async def test_stream_errors_busy_closed_and_end(daemon: Daemon) -> None:
    bus = await aioipc.dbus.connect(daemon.address)
    async with bus.signals(interface=IFACE) as sigs:
        async with anyio.create_task_group() as tg:

            async def receive_until_the_bus_closes() -> None:
                with pytest.raises(anyio.EndOfStream):
                    await sigs.receive()

            tg.start_soon(receive_until_the_bus_closes)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError):
                await sigs.receive()
            await bus.aclose()
        received = [sig async for sig in sigs]  # the bus was closed: iteration ends
        assert received == []
    with pytest.raises(anyio.ClosedResourceError):
        await sigs.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await bus.call(*DAEMON, "ListNames")
    with pytest.raises(anyio.ClosedResourceError):
        async with bus.signals():
            pass
    await bus.aclose()


async def test_cancelled_receive_loses_nothing(daemon: Daemon) -> None:
    async with (
        await aioipc.dbus.connect(daemon.address) as listener,
        await aioipc.dbus.connect(daemon.address) as emitter,
        listener.signals(interface=IFACE) as sigs,
    ):
        with anyio.move_on_after(0.05):
            await sigs.receive()
        await emitter.emit("/x", IFACE, "After")
        with anyio.fail_after(TIMEOUT):
            assert (await sigs.receive()).member == "After"


async def test_daemon_killed_mid_call_is_a_clear_error(daemon: Daemon) -> None:
    service = await aioipc.dbus.connect(daemon.address)
    client = await aioipc.dbus.connect(daemon.address)
    echo = Echo()
    await service.export("/echo", echo)
    async with client.signals(interface=IFACE) as sigs, anyio.create_task_group() as tg:

        async def call_that_never_returns() -> None:
            with pytest.raises(anyio.BrokenResourceError) as caught:
                await client.call(service.unique_name, "/echo", IFACE, "Hang", timeout=TIMEOUT)
            assert isinstance(caught.value.__cause__, EOFError | OSError)

        async def stream_that_breaks() -> None:
            with pytest.raises(anyio.BrokenResourceError):
                await sigs.receive()

        tg.start_soon(call_that_never_returns)
        tg.start_soon(stream_that_breaks)
        with anyio.fail_after(TIMEOUT):
            await echo.hanging.wait()  # the call reached the service: kill the daemon with it in flight
        daemon.kill()
    with pytest.raises(anyio.BrokenResourceError):
        await client.call(*DAEMON, "ListNames")
    echo.release.set()  # the method finishes after the bus is gone: its reply is dropped quietly
    with anyio.fail_after(TIMEOUT):
        while service.message_bus._pending_futures:
            await asyncio.sleep(0)
    await client.aclose()
    await service.aclose()


def test_public_names_exist() -> None:
    assert all(hasattr(aioipc.dbus, name) for name in aioipc.dbus.__all__)
    assert issubclass(DBusError, aioipc.IPCError)


def test_without_dbus_fast_import_aioipc_works_and_dbus_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["dbus_fast"] = None
        import aioipc
        try:
            import aioipc.dbus
        except ImportError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert "pip install 'aioipc[dbus]'" in proc.stdout


async def test_cli_lists_the_names_on_a_bus(daemon: Daemon) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aioipc", "ls", "--dbus", daemon.address, stdout=asyncio.subprocess.PIPE
    )
    with anyio.fail_after(TIMEOUT):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert "org.freedesktop.DBus" in out.decode().splitlines()


async def test_dbus_fast_still_has_the_private_attributes_the_shim_reads(daemon: Daemon) -> None:
    """Fails loudly when a dbus-fast upgrade renames or retypes what aioipc/dbus/_shim.py touches."""
    from aioipc.dbus._shim import PRIVATE_ATTRIBUTES

    async with await aioipc.dbus.connect(daemon.address) as bus:
        for name, kind in PRIVATE_ATTRIBUTES.items():
            value = getattr(bus.message_bus, name, AttributeError)
            assert isinstance(value, kind), (
                f"dbus-fast's MessageBus.{name} is now {value!r}, not a {kind.__name__}: "
                "update aioipc/dbus/_shim.py for this dbus-fast version"
            )
        assert bus.message_bus._disconnected is False


def test_dbus_error_is_dbus_fasts_too_and_importing_aioipc_does_not_import_dbus_fast() -> None:
    import dbus_fast

    error = DBusError("org.example.Test.Error.Nope", "nope")
    assert isinstance(error, dbus_fast.DBusError)
    assert isinstance(error, aioipc.IPCError)
    assert (error.name, error.text, str(error)) == (
        "org.example.Test.Error.Nope",
        "nope",
        "org.example.Test.Error.Nope: nope",
    )
    assert DBusError is aioipc._core.errors.DBusError  # one exception tree; the public path re-exports it
    code = (
        "import sys, aioipc, aioipc.mq, aioipc.sync, aioipc.sysv\n"
        "print(sorted(m for m in sys.modules if m.startswith('dbus_fast')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert proc.stdout.strip() == "[]"
