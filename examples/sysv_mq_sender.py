"""The classic System V message-queue sender: send each word as type 1, then "exit" as type 2.

The key is ``ftok()`` of ``sysv_mq_receiver.py``; waits (up to 10 s) for
the receiver to create the queue::

    python examples/sysv_mq_sender.py hello world
"""

from __future__ import annotations

import argparse
from pathlib import Path

import aioipc
import aioipc.sysv

RECEIVER = Path(__file__).with_name("sysv_mq_receiver.py")


async def main(proj: int, words: list[str]) -> None:
    # waits for the receiver to create the queue: TimeoutError naming it after 10 s
    async with await aioipc.connect(f"sysvmq:{RECEIVER}#{proj}", timeout=10) as queue:
        assert isinstance(queue, aioipc.sysv.MessageQueue)  # for its typed send(type=...)
        for word in words:
            await queue.send(word.encode(), type=1)
        await queue.send(b"exit", type=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proj", type=int, default=1, help="ftok project id, 1-255 (default: %(default)s)")
    parser.add_argument("words", nargs="*", default=["hello", "world"])
    args = parser.parse_args()
    aioipc.run(main(args.proj, args.words), exit_quietly=True)
