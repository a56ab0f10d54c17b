"""The classic POSIX message-queue sender: send each word, then "exit".

Waits (up to 10 s) for ``mq_receiver.py`` to create the queue::

    python examples/mq_sender.py hello world
"""

from __future__ import annotations

import argparse

import anyio

import aioipc
import aioipc.mq


async def open_when_created(name: str) -> aioipc.mq.MessageQueue:
    with anyio.fail_after(10):
        while True:
            try:
                return await aioipc.mq.open(name, read=False)
            except FileNotFoundError:
                await anyio.sleep(0.05)  # the receiver has not created it yet


async def main(name: str, words: list[str]) -> None:
    async with await open_when_created(name) as queue:
        for word in words:
            await queue.send(word.encode())
        await queue.send(b"exit")  # same priority as the words: it comes last


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="/aioipc-example", help="queue name (default: %(default)s)")
    parser.add_argument("words", nargs="*", default=["hello", "world"])
    args = parser.parse_args()
    aioipc.run(main(args.name, args.words))
