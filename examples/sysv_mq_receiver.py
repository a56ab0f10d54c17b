"""The classic System V message-queue receiver: print every message until "exit".

The key comes from ``ftok()`` on this script's own path, as C programs
would compute it. It creates the queue (0600, removed again when it exits, on Ctrl-C and ``kill`` too)
and, unless told ``--alone``, starts ``sysv_mq_sender.py`` itself::

    python examples/sysv_mq_receiver.py
    python examples/sysv_mq_receiver.py --alone      # then, in another terminal:
    python examples/sysv_mq_sender.py hello world

Messages of type 1 are text; the sender ends with "exit" as type 2. The
receiver asks for ``type=-2``: the lowest type first, so every text message
queued before "exit" is printed before it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aioipc
import aioipc.sysv

PROJ = 1


async def main(proj: int, alone: bool) -> None:
    key = aioipc.sysv.ftok(__file__, proj)
    try:
        queue = await aioipc.sysv.MessageQueue.open(key, create=True)
    except FileExistsError:
        sys.exit(
            f"the queue sysvmq:{key:#x} exists: if no receiver runs, remove it: aioipc rm sysvmq:{key:#x}"
        )
    async with queue:
        print(f"receiving on sysvmq:{key:#x}", flush=True)
        sender = None
        if not alone:
            script = Path(__file__).with_name("sysv_mq_sender.py")
            sender = await asyncio.create_subprocess_exec(
                sys.executable, str(script), "--proj", str(proj), "hello", "from", "another", "process"
            )
        while True:
            data, mtype = await queue.receive_with_type(-2)
            print(f"received {data.decode()!r} (type {mtype})", flush=True)
            if mtype == 2:
                break
        if sender is not None:
            print("sender exited with", await sender.wait())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--proj", type=int, default=PROJ, help="ftok project id, 1-255 (default: %(default)s)"
    )
    parser.add_argument("--alone", action="store_true", help="do not start the sender")
    args = parser.parse_args()
    aioipc.run(main(args.proj, args.alone), exit_quietly=True)
