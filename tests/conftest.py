"""Every async test runs once on stock asyncio and once on uvloop, and fails on
any exception the loop reports as unhandled."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop
from helpers import Daemon, NatsServer, start_nats_server

_loop_errors: list[dict[str, Any]] = []


def _recording(
    name: str, factory: Callable[[], asyncio.AbstractEventLoop]
) -> Callable[[], asyncio.AbstractEventLoop]:
    def make() -> asyncio.AbstractEventLoop:
        # Children this test starts (examples, peers run by aioipc.run) take the same loop.
        os.environ["AIOIPC_LOOP"] = name
        loop = factory()
        loop.set_exception_handler(lambda _loop, context: _loop_errors.append(context))
        return loop

    return make


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    return {
        "asyncio": _recording("asyncio", asyncio.new_event_loop),
        "uvloop": _recording("uvloop", uvloop.new_event_loop),
    }


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test that runs examples without a loop of its own runs them on each loop.
    if "example_loop" in metafunc.fixturenames and not inspect.iscoroutinefunction(metafunc.function):
        metafunc.parametrize("example_loop", ["asyncio", "uvloop"], indirect=True)


@pytest.fixture
def example_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The loop the examples a synchronous test runs take (``AIOIPC_LOOP``); async tests set it themselves."""
    name: str | None = getattr(request, "param", None)
    if name is not None:
        monkeypatch.setenv("AIOIPC_LOOP", name)
    return name


@pytest.fixture(autouse=True)
def _fail_on_loop_errors() -> Iterator[None]:
    _loop_errors.clear()
    yield
    errors = list(_loop_errors)
    _loop_errors.clear()
    if errors:
        pytest.fail(f"unhandled exceptions in the event loop: {errors!r}")


@pytest.fixture
def tmp_ipc_dir() -> Iterator[Path]:
    """A private directory for socket files and FIFOs (short path: sun_path is 108 bytes)."""
    base = Path("/tmp") / f"aioipc-test-{uuid.uuid4().hex[:10]}"
    base.mkdir(mode=0o700)
    yield base
    for child in base.iterdir():
        child.unlink()
    base.rmdir()


@pytest.fixture
def unique_name() -> str:
    """A name no other test (or earlier run) uses, for kernel objects with global names."""
    return f"aioipc-test-{os.getpid()}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def usr_handlers() -> Iterator[None]:
    """Put back whatever handles SIGUSR1/SIGUSR2 after the test."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def daemon(tmp_ipc_dir: Path) -> Iterator[Daemon]:
    """A private session bus daemon in the test's own directory; the machine's buses stay untouched."""
    process = subprocess.Popen(
        ["dbus-daemon", "--session", f"--address=unix:path={tmp_ipc_dir / 'bus'}", "--print-address=1",
         "--nofork", "--nopidfile"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    address = process.stdout.readline().strip()
    process.stdout.close()
    try:
        assert address.startswith("unix:path="), f"dbus-daemon did not start (printed {address!r})"
        yield Daemon(process, address)
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A private ``nats-server`` on a free 127.0.0.1 port; ``nats_server.url`` is ``nats://127.0.0.1:PORT``."""
    server = start_nats_server()
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.terminate()
        server.process.wait(timeout=10)
        if server.process.stderr is not None:
            server.process.stderr.close()
