"""systemd: services started with an inherited listening socket (by systemd-socket-activate and by hand),
and a test-owned datagram socket as NOTIFY_SOCKET that hears READY, STATUS, STOPPING and WATCHDOG."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from helpers import Service, loop_name, shell_kill

import aioipc
import aioipc.process
import aioipc.systemd
from aioipc.shutdown import graceful_shutdown

ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate is not installed (Debian package systemd)"
)

# argv: LOOP NAME FRAMING; serves sd-listen:NAME with an echo until SIGTERM, telling systemd how it goes.
ECHO_SERVICE = """
    import sys
    import aioipc, aioipc.systemd
    from aioipc.shutdown import graceful_shutdown

    async def echo(stream):
        async for message in stream:
            await stream.send(b"echo " + message)

    async def main():
        loop, name, framing = sys.argv[1:]
        inherited = aioipc.systemd.listen_fds()
        print("fds", [(fd.fd, fd.name) for fd in inherited], flush=True)
        async with graceful_shutdown(timeout=5, notify=True) as sd:
            if len(inherited) > 1:
                try:
                    await aioipc.serve("sd-listen:", echo)
                except ValueError as exc:
                    print("error:", exc, flush=True)
            framing = None if framing == "raw" else "length"
            server = await aioipc.serve("sd-listen:" + name, echo, framing=framing)
            sd.add_hook(server.close)
            print("serving", server.address, flush=True)
            sd.ready(status="serving " + server.address)
            await server.serve_forever()
        # the inherited socket stays ours once its server closed: it serves again, and its file stays
        async with await aioipc.serve("sd-listen:" + name, echo, framing=framing):
            pass
        print("stopped", sd.exit_status, flush=True)

    aioipc.run(main(), loop=sys.argv[1])
"""


class Notifications:
    """A datagram socket this test owns, given to the service as NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address  # a path or an abstract @name, as NOTIFY_SOCKET spells it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.stream = aioipc.sockets.from_socket(sock)

    async def next(self) -> tuple[float, list[str]]:
        """The next datagram's arrival time and its lines."""
        message = await self.stream.receive()
        return asyncio.get_running_loop().time(), message.decode().split("\n")

    async def expect(self, *lines: str) -> list[float]:
        """Wait for a datagram of exactly ``lines``; return when each watchdog ping seen meanwhile came."""
        pings = []
        while True:
            when, got = await self.next()
            if got == list(lines):
                return pings
            assert got == ["WATCHDOG=1"], got
            pings.append(when)


@asynccontextmanager
async def notifications(address: str) -> AsyncIterator[Notifications]:
    notes = Notifications(address)
    async with notes.stream:
        yield notes


@asynccontextmanager
async def started(
    tmp_path: Path, argv: list[str], *, stdin: int | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[Service]:
    """``argv`` (a launcher) then the echo service with the loop's name; stdout and stderr read as lines."""
    script = tmp_path / "echo_service.py"
    script.write_text(textwrap.dedent(ECHO_SERVICE))
    launcher, args = argv[:-2], argv[-2:]
    proc = await aioipc.process.spawn(
        [*launcher, sys.executable, str(script), loop_name(), *args],
        channel=False, stdin=stdin, stdout=aioipc.process.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    async with proc:
        yield Service(proc)


async def line_starting(svc: Service, prefix: str) -> str:
    """The next line that starts with ``prefix`` (systemd-socket-activate's log lines come in between)."""
    while not (line := await svc.line()).startswith(prefix):
        pass
    return line


async def stop(svc: Service) -> None:
    """SIGTERM, as systemd stops a service; it must stop cleanly."""
    await shell_kill("TERM", svc.pid)
    assert await line_starting(svc, "stopped") == "stopped 143"
    assert await svc.proc.wait() == 0


@needs_activate
async def test_socket_activated_by_name_echoes_says_ready_and_stopping_and_keeps_the_file(
    tmp_ipc_dir: Path, tmp_path: Path
) -> None:
    path = tmp_ipc_dir / "echo.sock"
    async with notifications(str(tmp_ipc_dir / "notify")) as notes:
        launcher = [ACTIVATE, "-l", str(path), "--fdname=echo", "-E", f"NOTIFY_SOCKET={notes.address}"]
        async with started(tmp_path, [*launcher, "echo", "length"]) as svc:
            with anyio.fail_after(20):
                await line_starting(svc, f"Listening on {path} as 3.")
                async with await aioipc.connect(f"unix:{path}") as client:  # the first client starts it
                    await client.send(b"hello")
                    assert await client.receive() == b"echo hello"
                assert await line_starting(svc, "fds") == "fds [(3, 'echo')]"
                assert await svc.line() == f"serving unix:{path}"
                assert await notes.expect("READY=1", f"STATUS=serving unix:{path}") == []
                await shell_kill("TERM", svc.pid)
                await notes.expect("STOPPING=1")
                assert await line_starting(svc, "stopped") == "stopped 143"
                assert await svc.proc.wait() == 0
    assert path.is_socket()  # systemd owns it: never removed


def _activate_knows(flag: str) -> bool:
    assert ACTIVATE is not None
    return flag in subprocess.run([ACTIVATE, "--help"], capture_output=True, text=True, timeout=10).stdout


@needs_activate
@pytest.mark.parametrize(
    ("flag", "scheme"),
    [("--datagram", "unix+dgram"), ("--seqpacket", "unix+seqpacket")],
)
async def test_socket_type_decides_datagram_or_seqpacket(
    tmp_ipc_dir: Path, tmp_path: Path, flag: str, scheme: str
) -> None:
    if not _activate_knows(flag):
        pytest.skip(f"this systemd-socket-activate has no {flag}")
    path = tmp_ipc_dir / "echo.sock"
    async with started(tmp_path, [ACTIVATE, flag, "-l", str(path), "", "length"]) as svc:
        with anyio.fail_after(20):
            await line_starting(svc, f"Listening on {path} as 3.")
            async with await aioipc.connect(f"{scheme}:{path}") as client:
                for message in (b"one", b"", b"three"):
                    await client.send(message)
                    assert await client.receive() == b"echo " + message
            assert await line_starting(svc, "fds") == "fds [(3, 'unknown')]"
            assert await svc.line() == f"serving {scheme}:{path}"
            await stop(svc)
    assert path.is_socket()


@needs_activate
async def test_several_sockets_are_picked_by_name(tmp_ipc_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_ipc_dir / "first.sock", tmp_ipc_dir / "second.sock"
    launcher = [ACTIVATE, "-l", str(first), "-l", str(second), "--fdname=first:second"]
    async with started(tmp_path, [*launcher, "second", "length"]) as svc:
        with anyio.fail_after(20):
            await line_starting(svc, f"Listening on {second} as 4.")
            async with await aioipc.connect(f"unix:{second}") as client:
                await client.send(b"hi")
                assert await client.receive() == b"echo hi"
            assert await line_starting(svc, "fds") == "fds [(3, 'first'), (4, 'second')]"
            assert await svc.line() == (
                "error: sd-listen: wants exactly one socket; inherited: fd 3 'first', fd 4 'second'; "
                "pick one with sd-listen:NAME"
            )
            assert await svc.line() == f"serving unix:{second}"
            await stop(svc)
    assert first.is_socket()
    assert second.is_socket()


async def test_by_hand_raw_with_an_abstract_notify_socket_and_the_watchdog(
    tmp_ipc_dir: Path, tmp_path: Path, unique_name: str
) -> None:
    path = tmp_ipc_dir / "raw.sock"
    period = 1.0  # WATCHDOG_USEC: a ping must come at least every 0.5 s
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "WATCHDOG_", "NOTIFY_"))}
    # fd 0 becomes fd 3, and LISTEN_PID is the pid that execs the service, as systemd sets them.
    wrapper = ["sh", "-c", 'exec 3<&0 0</dev/null; export LISTEN_PID=$$ WATCHDOG_PID=$$; exec "$@"', "sh"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        async with notifications(f"@{unique_name}") as notes:
            watchdog_usec = str(int(period * 1e6))
            env |= {"LISTEN_FDS": "1", "NOTIFY_SOCKET": notes.address, "WATCHDOG_USEC": watchdog_usec}
            async with started(tmp_path, [*wrapper, "", "raw"], stdin=listener.fileno(), env=env) as svc:
                listener.close()
                with anyio.fail_after(20):
                    assert await svc.line() == "fds [(3, 'unknown')]"
                    assert await svc.line() == f"serving unix:{path}"
                    await notes.expect("READY=1", f"STATUS=serving unix:{path}")
                    async with await aioipc.connect(f"unix:{path}", framing=None) as client:
                        await client.send(b"raw bytes")
                        received = b""
                        while len(received) < len(b"echo raw bytes"):
                            received += await client.receive()
                        assert received == b"echo raw bytes"
                    pings = []
                    while len(pings) < 4:
                        when, lines = await notes.next()
                        assert lines == ["WATCHDOG=1"]
                        pings.append(when)
                    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
                    assert max(gaps) <= period / 2, gaps
                    await shell_kill("TERM", svc.pid)
                    await notes.expect("STOPPING=1")
                    assert await svc.line() == "stopped 143"
                    assert await svc.proc.wait() == 0
    assert path.is_socket()


# -- in this process: notify(), the variables, and what graceful_shutdown sends when it should not --


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram_to_a_path_or_an_abstract_name(
    monkeypatch: pytest.MonkeyPatch, tmp_ipc_dir: Path, unique_name: str, abstract: bool
) -> None:
    address = f"@{unique_name}" if abstract else str(tmp_ipc_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + unique_name if abstract else address)
        receiver.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert aioipc.systemd.notify("READY=1", "STATUS=all good") is True
        assert receiver.recv(4096) == b"READY=1\nSTATUS=all good"


def test_notify_without_notify_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert aioipc.systemd.notify("READY=1") is False
    with pytest.raises(ValueError, match="at least one state"):
        aioipc.systemd.notify()
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    with pytest.raises(ValueError, match="neither a path nor"):
        aioipc.systemd.notify("READY=1")


async def _never(stream: object) -> None:
    raise AssertionError("no handler may run")


async def test_variables_for_another_process_mean_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))  # inherited from a parent: not ours
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    assert aioipc.systemd.listen_fds() == []
    with pytest.raises(ValueError, match=rf"found none \(LISTEN_PID='{os.getppid()}', LISTEN_FDS='1'"):
        await aioipc.serve("sd-listen:", _never)
    with pytest.raises(ValueError, match="can only be served"):
        await aioipc.connect("sd-listen:")
    assert aioipc.systemd.listen_fds(unset_environment=True) == []
    assert "LISTEN_PID" not in os.environ
    assert "LISTEN_FDS" not in os.environ


def test_malformed_variables_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    monkeypatch.setenv("LISTEN_FDNAMES", "only-one")
    with pytest.raises(ValueError, match="does not name each"):
        aioipc.systemd.listen_fds()
    monkeypatch.setenv("LISTEN_FDS", "0")
    assert aioipc.systemd.listen_fds() == []
    monkeypatch.setenv("LISTEN_FDS", "-1")
    with pytest.raises(ValueError, match="malformed"):
        aioipc.systemd.listen_fds()


async def test_graceful_shutdown_sends_nothing_unasked_nor_pings_for_another_pid(
    monkeypatch: pytest.MonkeyPatch, tmp_ipc_dir: Path
) -> None:
    async with notifications(str(tmp_ipc_dir / "notify")) as notes:
        monkeypatch.setenv("NOTIFY_SOCKET", notes.address)
        monkeypatch.setenv("WATCHDOG_USEC", "20000")  # 20 ms
        for notify, watchdog_pid in ((True, "1"), (False, str(os.getpid()))):
            monkeypatch.setenv("WATCHDOG_PID", watchdog_pid)
            async with asyncio.timeout(10):
                async with graceful_shutdown(signals=(), notify=notify) as sd:
                    await asyncio.sleep(0.1)  # five watchdog periods in which no ping may come
                    assert sd.ready() is True
                    sd.trigger()
                    await asyncio.Event().wait()
                assert (await notes.next())[1] == ["READY=1"]
                if notify:
                    assert (await notes.next())[1] == ["STOPPING=1"]
        aioipc.systemd.notify("END=1")
        with anyio.fail_after(10):
            assert (await notes.next())[1] == ["END=1"]  # and nothing before it


async def test_serve_socket_serves_a_tcp_socket_bound_elsewhere_and_refuses_a_connection() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connected:
        with pytest.raises(ValueError, match="not listening"):
            await aioipc.sockets.serve_socket(connected, _never)
        with pytest.raises(TypeError, match="mode= does not apply"):
            await aioipc.sockets.serve_socket(connected, _never, mode=0o600)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def echo(messages: aioipc.MessageStream) -> None:
        async for message in messages:
            await messages.send(message)

    async with await aioipc.sockets.serve_socket(listener, echo) as server:
        assert server.address == f"tcp:127.0.0.1:{port}"
        with anyio.fail_after(10):
            async with await aioipc.connect(server.address) as client:
                await client.send(b"ping")
                assert await client.receive() == b"ping"
    assert listener.fileno() == -1  # the server owned it and closed it


@needs_activate
async def test_example_socket_activated_echo_runs_under_systemd_socket_activate(tmp_ipc_dir: Path) -> None:
    path = tmp_ipc_dir / "echo.sock"
    example = Path(__file__).parent.parent / "examples" / "socket_activated_echo.py"
    proc = await aioipc.process.spawn(
        [ACTIVATE, "-l", str(path), sys.executable, str(example)],
        channel=False, stdout=aioipc.process.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    async with proc:
        svc = Service(proc)
        with anyio.fail_after(20):
            await line_starting(svc, f"Listening on {path} as 3.")
            async with await aioipc.connect(f"unix:{path}", framing=None) as client:
                await client.send(b"hello\n")
                received = b""
                while not received.endswith(b"\n"):
                    received += await client.receive()
                assert received == b"hello\n"
            assert await line_starting(svc, "echoing on") == f"echoing on unix:{path}"
            await shell_kill("TERM", svc.pid)
            assert await svc.rest() == ["stopped by SIGTERM"]  # quietly: no traceback
            assert await proc.wait() == 0
    assert path.is_socket()


def test_example_socket_activated_echo_says_how_to_start_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    proc = subprocess.run(
        [sys.executable, "socket_activated_echo.py"],
        cwd=Path(__file__).parent.parent / "examples", capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "sd-listen: needs a socket inherited from systemd" in proc.stderr
    assert "Traceback" not in proc.stderr
