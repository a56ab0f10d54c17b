"""The D-Bus examples, run as a user runs them: on a private bus they start, or on the one we give them."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import Daemon, run_python

pytestmark = [
    pytest.mark.usefixtures("example_loop"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("dbus-daemon", "dbus-send")),
        reason="needs dbus-daemon and dbus-send",
    ),
]


def run_example(name: str, *args: str, bus_address: str | None = None) -> list[str]:
    env = {key: value for key, value in os.environ.items() if key != "DBUS_SESSION_BUS_ADDRESS"}
    if bus_address is not None:
        env["DBUS_SESSION_BUS_ADDRESS"] = bus_address
    proc = run_python(name, *args, env=env)
    if bus_address is None:
        assert "started a private one" in proc.stderr
    return proc.stdout.splitlines()


def test_list_names_on_a_private_bus() -> None:
    lines = run_example("dbus_list_names.py")
    names = [line.split()[0] for line in lines]
    assert names[:2] == ["org.example.Neighbour", "org.freedesktop.DBus"]
    assert all(name.startswith(":") for name in names[2:])
    assert all(" pid " in line for line in lines)


def test_list_names_on_the_bus_in_the_environment(daemon: Daemon) -> None:
    lines = run_example("dbus_list_names.py", bus_address=daemon.address)
    assert lines[0].split()[0] == "org.freedesktop.DBus"
    assert not any("org.example.Neighbour" in line for line in lines)


def test_monitor_prints_signals_from_dbus_send() -> None:
    lines = run_example("dbus_monitor.py", "--interface", "org.example.Clock", "--count", "3")
    assert [line.split(" ", 3)[2:] for line in lines[:3]] == [
        ["org.example.Clock.Tick", f"us [{i}, 'tick']"] for i in range(3)
    ]
    assert lines[3] == "3 signals, 0 dropped"


def test_service_answers_its_client_and_emits() -> None:
    lines = run_example("dbus_service.py")
    assert lines[0].startswith("serving org.example.Greeter as :1.")
    assert lines[1:] == [
        "Hello, Ada!",
        "signal Greeted: ['Ada']",
        "Hello, Linus!",
        "signal Greeted: ['Linus']",
        "error: org.example.Greeter.Error.NoName",
    ]
