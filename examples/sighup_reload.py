"""Reload the configuration on SIGHUP, without stopping; stop on SIGTERM.

The daemon convention: ``kill -HUP <pid>`` re-reads the configuration file.
A configuration that fails to load is reported and the old one stays in
use. To finish by itself, this example edits its own configuration and
signals itself, as an operator would from a shell.

    python examples/sighup_reload.py
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from pathlib import Path

import aioipc
import aioipc.signals
from aioipc.shutdown import graceful_shutdown


def write_config(path: Path, text: str) -> None:
    path.write_text(text)


class Service:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = json.loads(path.read_text())
        self.reloaded = asyncio.Event()

    def reload(self) -> None:
        try:
            self.config = json.loads(self.path.read_text())
            print("reloaded:", self.config)
        except ValueError as exc:
            print(f"bad configuration ({exc}); keeping", self.config)
        finally:
            self.reloaded.set()

    async def hup_and_wait(self, new_text: str) -> None:
        """What an operator does: edit the file, then `kill -HUP <pid>`."""
        write_config(self.path, new_text)
        self.reloaded.clear()
        aioipc.signals.send(os.getpid(), signal.SIGHUP)
        await self.reloaded.wait()


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "service.json")
        write_config(path, json.dumps({"workers": 2, "greeting": "hello"}))
        service = Service(path)
        print("started with:", service.config)
        async with graceful_shutdown(timeout=5, reload=service.reload) as sd:
            await service.hup_and_wait(json.dumps({"workers": 8, "greeting": "bonjour"}))
            await service.hup_and_wait("{not json")
            aioipc.signals.send(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()  # the service's work, until the signal
        assert sd.reason is not None
        print("stopped by", signal.Signals(sd.reason).name, "with", service.config)


if __name__ == "__main__":
    aioipc.run(main(), exit_quietly=True)
