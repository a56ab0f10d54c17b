"""List the names on the session bus, with the process that owns each one.

The async version of ``dbus-send --print-reply --dest=org.freedesktop.DBus
/org/freedesktop/DBus org.freedesktop.DBus.ListNames``. Without a session
bus, it starts a private one (and a second connection that owns a name, so
there is something to see).

    python examples/dbus_list_names.py
"""

from __future__ import annotations

import os

from dbus_private_bus import session_bus

import aioipc
import aioipc.dbus

DAEMON = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")


async def main() -> None:
    async with (
        session_bus() as address,
        await aioipc.dbus.connect(address) as bus,
        await aioipc.dbus.connect(address) as neighbour,
    ):
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            await neighbour.request_name("org.example.Neighbour")
        for name in await aioipc.dbus.list_names(bus):
            try:
                [owner] = await bus.call(*DAEMON, "GetNameOwner", "s", [name], timeout=5)
                [pid] = await bus.call(*DAEMON, "GetConnectionUnixProcessID", "s", [name], timeout=5)
            except aioipc.dbus.DBusError as exc:  # the owner left meanwhile, or a bus without pids
                print(f"{name:32} ({exc.name})")
                continue
            print(f"{name:32} {owner:22} pid {pid}")


if __name__ == "__main__":
    aioipc.run(main(), exit_quietly=True)
