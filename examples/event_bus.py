"""An event bus: one publisher and two subscriber processes, each getting only what it asked for.

The publisher binds an address, starts two subscribers (this script with
``--subscriber``): "billing" wants ``orders.>``, "audit" wants ``*.created``.
Once both are subscribed it publishes a few events and closes, which ends
both subscriptions; then it prints what each subscriber printed::

    python examples/event_bus.py
    python examples/event_bus.py tcp:127.0.0.1:0

Ctrl-C or SIGTERM stops it and its subscribers quietly (status 128+signum);
the default address is in the abstract namespace, so nothing is left on disk.
``event_bus_nats.py`` runs the same over a NATS server.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import aioipc
import aioipc.process
import aioipc.pubsub

SUBSCRIBERS = {"billing": ["orders.>"], "audit": ["*.created"]}
EVENTS = [
    ("orders.created", b'{"order": 1}'),
    ("users.created", b'{"user": "ada"}'),
    ("orders.eu.paid", b'{"order": 1, "eur": 12}'),
    ("users.deleted", b'{"user": "bob"}'),
]
END = "bus.closed"  # the last event, for buses (NATS) whose publisher cannot end a subscription


async def subscriber(address: str, name: str) -> int:
    async with (
        aioipc.graceful_shutdown(timeout=5) as sd,
        await aioipc.pubsub.subscribe(address, *SUBSCRIBERS[name], END) as sub,
    ):
        print("subscribed", flush=True)
        async for subject, payload in sub:
            if subject == END:
                break
            print(f"{name} got {subject} {payload.decode()}", flush=True)
        print(f"{name}: done, {sub.dropped} dropped", flush=True)
    return sd.exit_status


async def publisher(address: str) -> int:
    async with (
        aioipc.graceful_shutdown(timeout=5) as sd,
        await aioipc.pubsub.publisher(address) as pub,
    ):
        children = []
        for name in SUBSCRIBERS:
            child = await aioipc.process.spawn(
                [sys.executable, __file__, pub.address, "--subscriber", name],
                channel=False,
                stdout=aioipc.process.PIPE,
            )
            # on Ctrl-C / SIGTERM, stop the subscribers too (hooks run last-in first-out):
            sd.add_hook(child.aclose)  # ... then close our ends of their pipes
            sd.add_hook(child.terminate)  # first SIGTERM, while they can still print
            assert child.stdout is not None
            lines = BufferedByteReceiveStream(child.stdout)
            assert await lines.receive_until(b"\n", 100) == b"subscribed"
            children.append((child, lines))
        print(f"publishing at {pub.address} to {len(children)} subscribers")
        for subject, payload in EVENTS:
            await pub.publish(subject, payload)
        await pub.publish(END, b"")
        await pub.aclose()
        for child, lines in children:
            async with child:
                while True:
                    try:
                        print((await lines.receive_until(b"\n", 1000)).decode())
                    except anyio.IncompleteRead:
                        break
                print(f"subscriber exited with {await child.wait()}")
    return sd.exit_status


def main(default_address: str | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "address", nargs="?" if default_address else None, default=default_address, help="where to publish"
    )
    parser.add_argument("--subscriber", choices=SUBSCRIBERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        sys.exit(aioipc.run(subscriber(args.address, args.subscriber)))
    sys.exit(aioipc.run(publisher(args.address)))


if __name__ == "__main__":
    main(f"unix:@aioipc-event-bus-{os.getpid()}")
