"""The classic System V message-queue sender: send each word as type 1, then "exit" as type 2.

The key is ``ftok()`` of ``sysv_mq_receiver.py``; waits (up to 10 s) for
the receiver to create the queue::

    python examples/sysv_mq_sender.py hello world
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

import aioipc
import aioipc.sysv

RECEIVER = Path(__file__).with_name("sysv_mq_receiver.py")


async def open_when_created(key: int) -> aioipc.sysv.MessageQueue:
    with anyio.fail_after(10):
        while True:
            try:
                return await aioipc.sysv.MessageQueue.open(key)
            except FileNotFoundError:
                await anyio.sleep(0.05)  # the receiver has not created it yet


async def main(proj: int, words: list[str]) -> None:
    async with await open_when_created(aioipc.sysv.ftok(RECEIVER, proj)) as queue:
        for word in words:
            await queue.send(word.encode(), type=1)
        await queue.send(b"exit", type=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proj", type=int, default=1, help="ftok project id, 1-255 (default: %(default)s)")
    parser.add_argument("words", nargs="*", default=["hello", "world"])
    args = parser.parse_args()
    aioipc.run(main(args.proj, args.words))
