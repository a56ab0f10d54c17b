"""Send SIGUSR1 to a process N times, each time waiting for its acknowledging SIGUSR1, then SIGUSR2.

    python examples/signal_sender.py PID [N]

Run by ``signal_receiver.py``; it works against any process that answers
SIGUSR1 with SIGUSR1.
"""

from __future__ import annotations

import signal
import sys

import anyio

import aioipc
import aioipc.signals


async def main(pid: int, count: int) -> None:
    async with aioipc.signals.receive(signal.SIGUSR1) as acks:
        for _ in range(count):
            aioipc.signals.send(pid, signal.SIGUSR1)
            with anyio.fail_after(10):
                await acks.receive()
    aioipc.signals.send(pid, signal.SIGUSR2)


if __name__ == "__main__":
    aioipc.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3), exit_quietly=True)
