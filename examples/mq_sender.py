"""The classic POSIX message-queue sender: send each word, then "exit".

Waits (up to 10 s) for ``mq_receiver.py`` to create the queue::

    python examples/mq_sender.py hello world
"""

from __future__ import annotations

import argparse

import aioipc


async def main(name: str, words: list[str]) -> None:
    # waits for the receiver to create the queue: TimeoutError naming it after 10 s
    async with await aioipc.connect(f"mq:{name}", timeout=10, read=False) as queue:
        for word in words:
            await queue.send(word.encode())
        await queue.send(b"exit")  # same priority as the words: it comes last


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="/aioipc-example", help="queue name (default: %(default)s)")
    parser.add_argument("words", nargs="*", default=["hello", "world"])
    args = parser.parse_args()
    aioipc.run(main(args.name, args.words), exit_quietly=True)
