"""Receive SIGUSR1 and SIGUSR2 as an async stream, acknowledging each one.

The classic SIGUSR1/SIGUSR2 example, async. This script subscribes to both
signals, then starts ``signal_sender.py`` with its pid: the sender sends
SIGUSR1 a few times, waiting for an acknowledging SIGUSR1 back each time
(signals coalesce, so a sender that wants each one counted waits for an
answer), then SIGUSR2 to say it is done.

    python examples/signal_receiver.py

While it runs you can add your own: ``kill -USR1 <pid>`` from a shell.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import aioipc
import aioipc.process
import aioipc.signals

SENDER = Path(__file__).with_name("signal_sender.py")


async def main() -> None:
    async with aioipc.signals.receive(signal.SIGUSR1, signal.SIGUSR2) as sigs:
        print(f"receiver {os.getpid()} waiting for SIGUSR1 and SIGUSR2")
        sender = await aioipc.process.spawn(
            [sys.executable, str(SENDER), str(os.getpid()), "3"], channel=False
        )
        async with sender:
            count = 0
            async for signum in sigs:
                if signum == signal.SIGUSR2:
                    print(f"SIGUSR2: the sender is done after {count} SIGUSR1")
                    break
                count += 1
                print(f"SIGUSR1 #{count}")
                aioipc.signals.send(sender.pid, signal.SIGUSR1)  # the acknowledgement
            print("sender exited with", await sender.wait())


if __name__ == "__main__":
    aioipc.run(main(), exit_quietly=True)
