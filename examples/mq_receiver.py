"""The classic POSIX message-queue receiver: print every message until "exit".

It creates the queue (0600, removed again when it exits, on Ctrl-C and
``kill`` too) and, unless told
``--alone``, starts ``mq_sender.py`` itself so that it finishes on its own::

    python examples/mq_receiver.py
    python examples/mq_receiver.py --alone      # then, in another terminal:
    python examples/mq_sender.py hello world
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aioipc
import aioipc.mq


async def main(name: str, alone: bool) -> None:
    try:
        queue = await aioipc.mq.open(name, create=True, max_message_size=1024)
    except FileExistsError:
        sys.exit(f"the queue mq:{name} exists: if no receiver runs, remove it: aioipc rm mq:{name}")
    async with queue:
        print(f"receiving on mq:{name}", flush=True)
        sender = None
        if not alone:
            script = Path(__file__).with_name("mq_sender.py")
            sender = await asyncio.create_subprocess_exec(
                sys.executable, str(script), "--name", name, "hello", "from", "another", "process"
            )
        while True:
            data, priority = await queue.receive_with_priority()
            text = data.decode()
            print(f"received {text!r} (priority {priority})", flush=True)
            if text == "exit":
                break
        if sender is not None:
            print("sender exited with", await sender.wait())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="/aioipc-example", help="queue name (default: %(default)s)")
    parser.add_argument("--alone", action="store_true", help="do not start the sender")
    args = parser.parse_args()
    aioipc.run(main(args.name, args.alone), exit_quietly=True)
