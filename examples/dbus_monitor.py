"""A small ``dbus-monitor``: print the signals on the session bus as they come.

    python examples/dbus_monitor.py [--interface NAME] [--member NAME] [--count N] [--seconds S]

It stops after ``--count`` signals or ``--seconds`` seconds. Without a
session bus, it starts a private one and has ``dbus-send`` emit a few
signals to it, so there is something to watch.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from dbus_private_bus import session_bus

import aioipc
import aioipc.dbus


async def emit_a_few(address: str, count: int) -> None:
    """What a shell script would do: signals from dbus-send, a program that is not ours."""
    for i in range(count):
        sender = await asyncio.create_subprocess_exec(
            "dbus-send", f"--bus={address}", "--type=signal", "/org/example/Clock",
            "org.example.Clock.Tick", f"uint32:{i}", "string:tick",
        )  # fmt: skip
        await sender.wait()


async def main(args: argparse.Namespace) -> None:
    async with (
        session_bus() as address,
        await aioipc.dbus.connect(address) as bus,
        bus.signals(interface=args.interface, member=args.member) as sigs,
        asyncio.TaskGroup() as tg,
    ):
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            tg.create_task(emit_a_few(address, args.count))
        seen = 0
        try:
            async with asyncio.timeout(args.seconds):
                async for sig in sigs:
                    print(f"{sig.sender} {sig.path} {sig.interface}.{sig.member} {sig.signature} {sig.body}")
                    seen += 1
                    if seen == args.count:
                        break
        except TimeoutError:
            pass
        print(f"{seen} signals, {sigs.dropped} dropped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interface")
    parser.add_argument("--member")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30)
    aioipc.run(main(parser.parse_args()), exit_quietly=True)
