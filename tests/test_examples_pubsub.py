"""The publish / subscribe examples, run as a user runs them, and stopped as a user stops them."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from helpers import EXAMPLES, NatsServer, run_example

import aioipc.process
import aioipc.pubsub

pytestmark = pytest.mark.usefixtures("example_loop")  # each example runs on both loops

EXPECTED = [
    'billing got orders.created {"order": 1}',
    'billing got orders.eu.paid {"order": 1, "eur": 12}',
    "billing: done, 0 dropped",
    "subscriber exited with 0",
    'audit got orders.created {"order": 1}',
    'audit got users.created {"user": "ada"}',
    "audit: done, 0 dropped",
    "subscriber exited with 0",
]


def test_event_bus() -> None:
    lines = run_example("event_bus.py")
    assert re.fullmatch(r"publishing at unix:@aioipc-event-bus-\d+ to 2 subscribers", lines[0])
    assert lines[1:] == EXPECTED


def test_event_bus_over_nats(nats_server: NatsServer) -> None:
    lines = run_example("event_bus_nats.py", nats_server.url)
    assert lines == [f"publishing at {nats_server.url} to 2 subscribers", *EXPECTED]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_event_bus_stops_quietly(sig: signal.Signals) -> None:
    # whenever the signal comes: 0 if it was done already, else 128 + signum; never a traceback
    proc = subprocess.Popen(
        [sys.executable, "event_bus.py"], cwd=EXAMPLES, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"publishing at")  # it prints at once, then publishes
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode in (0, 128 + sig), err
    assert b"Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_an_event_bus_subscriber_stops_quietly(sig: signal.Signals, unique_name: str) -> None:
    async with await aioipc.pubsub.publisher(f"unix:@{unique_name}") as pub:
        proc = await aioipc.process.spawn(
            [sys.executable, str(EXAMPLES / "event_bus.py"), pub.address, "--subscriber", "audit"],
            channel=False,
            stdout=aioipc.process.PIPE,
            stderr=aioipc.process.PIPE,
        )
        async with proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            with anyio.fail_after(30):
                assert await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 100) == b"subscribed"
                proc.send_signal(sig)
                assert await proc.wait() == 128 + sig
                assert b"Traceback" not in b"".join([chunk async for chunk in proc.stderr])
