"""A worker that takes jobs from a spool directory, fed by a shell, by Python, by anything.

A spool is a durable queue in a directory: a job is a file written in
``DIR/tmp/`` and renamed into ``DIR/new/``, so any program can enqueue
one; the worker claims each job by renaming it, and deletes it only once
the job is done. Jobs survive the worker's crashes and restarts.

With a directory, the worker serves that spool until Ctrl-C or SIGTERM;
enqueue from another terminal with::

    printf 'resize cat.jpg' > DIR/tmp/job1 && mv DIR/tmp/job1 DIR/new/

Without one, it runs a demonstration: a shell enqueues three jobs, this
process one more with ``aioipc.connect("spool:DIR")``, and the worker
stops itself with SIGTERM once all four are done.

    python examples/spool_worker.py [DIR]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile

import aioipc
import aioipc.signals
from aioipc.shutdown import graceful_shutdown
from aioipc.spool import SpoolReader

SHELL_FEEDER = """
for job in "resize cat.jpg" "send mail to ana" "rotate logs"; do
    name=$(date +%s%N)
    printf '%s' "$job" > "$1/tmp/$name" && mv "$1/tmp/$name" "$1/new/"
done
"""


async def main(directory: str | None) -> None:
    demo = directory is None
    spool = directory or tempfile.mkdtemp(prefix="aioipc-example-")
    done = 0

    async def worker(jobs: SpoolReader) -> None:
        nonlocal done
        async for job in jobs:  # asking for the next job deletes the one before: it is done
            print("done:", job.decode(), flush=True)
            done += 1
            if demo and done == 4:
                aioipc.signals.send(os.getpid(), signal.SIGTERM)  # as `kill` or systemd would

    try:
        async with (
            graceful_shutdown(timeout=5) as sd,
            await aioipc.serve(f"spool:{spool}", worker) as server,
        ):
            if demo:
                shell = await asyncio.create_subprocess_exec("sh", "-c", SHELL_FEEDER, "sh", spool)
                await shell.wait()
                async with await aioipc.connect(f"spool:{spool}") as jobs:
                    await jobs.send(b"compress backups")
            else:
                print(f"serving spool:{spool}; enqueue with:", flush=True)
                print(f"printf job > {spool}/tmp/x && mv {spool}/tmp/x {spool}/new/", flush=True)
            await server.serve_forever()
        if sd.reason is not None:
            print(f"stopped by {signal.Signals(sd.reason).name} after {done} jobs")
    finally:
        if demo:
            shutil.rmtree(spool)  # the demonstration's spool; a real one is kept: it is durable


if __name__ == "__main__":
    aioipc.run(main(sys.argv[1] if len(sys.argv) > 1 else None), exit_quietly=True)
