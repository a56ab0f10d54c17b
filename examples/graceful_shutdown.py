"""A Unix-socket service that stops cleanly on SIGTERM or Ctrl-C, running its cleanup hooks.

The server answers clients until a shutdown signal comes; then the work
is cancelled and the hooks run last-in first-out within the timeout: the
server stops accepting and gives its connections a moment to finish, the
journal is flushed, the socket directory is removed. A second Ctrl-C
during the shutdown would exit at once (status 130).

To finish by itself, this example sends itself SIGTERM once a client was
served, as ``kill`` or systemd would.

    python examples/graceful_shutdown.py
"""

from __future__ import annotations

import os
import signal
import tempfile

import aioipc
import aioipc.signals
from aioipc.shutdown import graceful_shutdown


async def main() -> None:
    directory = tempfile.mkdtemp(prefix="aioipc-example-")
    address = f"unix:{directory}/service.sock"
    journal: list[str] = []

    async def handler(messages: aioipc.MessageStream) -> None:
        async for request in messages:
            journal.append(request.decode())
            await messages.send(b"done: " + request)

    def flush_journal() -> None:
        print(f"hook: flushed {len(journal)} journal entries")

    def remove_directory() -> None:
        os.rmdir(directory)
        print("hook: removed the socket directory")

    async with graceful_shutdown(timeout=10) as sd:
        sd.add_hook(remove_directory)  # hooks run last-in first-out: this one runs last
        sd.add_hook(flush_journal)
        server = await aioipc.serve(address, handler)
        sd.add_hook(server.close, grace=2)  # runs first: stop accepting, drain, close
        print("serving on", server.address)

        async with await aioipc.connect(address) as client:
            for job in ("resize image", "send mail"):
                await client.send(job.encode())
                print("client got:", (await client.receive()).decode())

        aioipc.signals.send(os.getpid(), signal.SIGTERM)  # as `kill <pid>` would
        await server.serve_forever()  # cancelled by the signal
    assert sd.reason is not None
    print(f"stopped by {signal.Signals(sd.reason).name}; hooks that failed: {len(sd.failures)}")


if __name__ == "__main__":
    aioipc.run(main(), exit_quietly=True)
