"""Helper for the D-Bus examples: the session bus, or a private one when there is none.

``async with session_bus() as address`` yields ``$DBUS_SESSION_BUS_ADDRESS``
when it is set; otherwise it starts a private ``dbus-daemon --session`` in a
temporary directory, yields its address, and stops it at the end of the
block (so the examples run anywhere, CI included).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def session_bus() -> AsyncIterator[str]:
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        yield address
        return
    with tempfile.TemporaryDirectory(prefix="aioipc-dbus-") as directory:
        daemon = await asyncio.create_subprocess_exec(
            "dbus-daemon",
            "--session",
            f"--address=unix:path={directory}/bus",
            "--print-address=1",
            "--nofork",
            "--nopidfile",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert daemon.stdout is not None
            async with asyncio.timeout(10):
                address = (await daemon.stdout.readline()).decode().strip()
            if not address:
                raise RuntimeError("dbus-daemon did not start")
            print(f"(no session bus: started a private one at {address})", file=sys.stderr)
            yield address
        finally:
            if daemon.returncode is None:
                daemon.terminate()
            await daemon.wait()
