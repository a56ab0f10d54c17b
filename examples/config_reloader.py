"""Reload a configuration file the moment it changes: inotify on the loop, no polling, no signal.

The service watches its configuration file with ``aioipc.files.watch``,
which follows the file across rename-and-replace saves (an editor's, or
``aioipc.files.write_atomic``'s), so it never reads half a file. An update
that fails to parse is reported and the last good configuration stays.

With a path, it watches that file until Ctrl-C or SIGTERM (try
``echo '{"workers": 3}' > PATH`` from a shell). Without one, it runs a
demonstration: it updates its own configuration with ``write_atomic`` and
with an editor-style save from a shell, then stops itself with SIGTERM.

    python examples/config_reloader.py [PATH]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import anyio

import aioipc
import aioipc.files
import aioipc.signals
from aioipc.shutdown import graceful_shutdown


class Service:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: Any = None
        self.loaded = asyncio.Event()

    def load(self) -> None:
        try:
            self.config = json.loads(self.path.read_bytes())
            print("loaded:", self.config, flush=True)
        except FileNotFoundError:
            print("no configuration yet; keeping", self.config, flush=True)
        except ValueError as exc:
            print(f"bad configuration ({exc}); keeping", self.config, flush=True)
        self.loaded.set()

    async def follow(self) -> None:
        async with aioipc.files.watch(self.path, kinds={"created", "modified", "moved"}) as changes:
            self.load()
            async for _change in changes:
                self.load()


async def editor_save(path: Path, text: str) -> None:
    """Save as editors do: write a new file beside it, then rename it over the old one."""
    script = f"printf '{text}' > {path}.swp && mv {path}.swp {path}"
    shell = await asyncio.create_subprocess_exec("sh", "-c", script)
    await shell.wait()


async def change(service: Service, write: Awaitable[None]) -> None:
    """Run ``write`` (what an operator does), then wait until the service has read it."""
    service.loaded.clear()
    await write
    await service.loaded.wait()


async def demonstrate(service: Service) -> None:
    path = service.path
    await service.loaded.wait()
    await change(service, aioipc.files.write_atomic(path, b'{"workers": 8}'))
    await change(service, editor_save(path, "{not json"))
    await change(service, aioipc.files.write_atomic(path, b'{"workers": 4}'))
    aioipc.signals.send(os.getpid(), signal.SIGTERM)  # as `kill` or systemd would


async def main(path: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="aioipc-example-") as directory:
        service = Service(Path(path) if path else Path(directory, "service.json"))
        if path is None:
            await aioipc.files.write_atomic(service.path, b'{"workers": 2}')
        async with graceful_shutdown(timeout=5) as sd, anyio.create_task_group() as tasks:
            tasks.start_soon(service.follow)
            if path is None:
                await demonstrate(service)
        if sd.reason is not None:
            print("stopped by", signal.Signals(sd.reason).name, "with", service.config)


if __name__ == "__main__":
    aioipc.run(main(sys.argv[1] if len(sys.argv) > 1 else None), exit_quietly=True)
