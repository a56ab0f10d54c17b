"""A D-Bus service: one method, one signal, a well-known name; and a client for it.

The service exports ``org.example.Greeter`` at ``/org/example/Greeter``,
owns the name ``org.example.Greeter``, answers ``Greet(name) -> greeting``
and emits ``Greeted(name)`` after each greeting. The client (a second
connection, as another process would be) calls it through a proxy and
watches the signal. Try it from a shell while it runs with ``--serve``::

    python examples/dbus_service.py            # service and client, then exit
    python examples/dbus_service.py --serve 60 # serve for 60 s; then in another shell:
    gdbus call --session --dest org.example.Greeter --object-path /org/example/Greeter \\
        --method org.example.Greeter.Greet world
"""

from __future__ import annotations

import argparse
import asyncio

from dbus_fast.annotations import DBusStr
from dbus_private_bus import session_bus

import aioipc
import aioipc.dbus
from aioipc.dbus import ServiceInterface, dbus_method, dbus_signal

NAME = PATH_INTERFACE = "org.example.Greeter"
PATH = "/org/example/Greeter"


class Greeter(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(PATH_INTERFACE)

    @dbus_method()
    def Greet(self, name: DBusStr) -> DBusStr:
        if not name:
            raise aioipc.dbus.DBusError("org.example.Greeter.Error.NoName", "whom should I greet?")
        self.Greeted(name)  # emits the signal
        return f"Hello, {name}!"

    @dbus_signal()
    def Greeted(self, name: str) -> DBusStr:
        return name


async def client(address: str) -> None:
    async with await aioipc.dbus.connect(address) as bus:
        greeter = await bus.proxy(NAME, PATH, PATH_INTERFACE, timeout=5)
        async with greeter.signals("Greeted") as greeted:
            for name in ("Ada", "Linus"):
                print(await greeter.Greet(name))
                print("signal Greeted:", (await greeted.receive()).body)
            try:
                await greeter.Greet("")
            except aioipc.dbus.DBusError as exc:
                print("error:", exc.name)


async def main(args: argparse.Namespace) -> None:
    async with session_bus() as address, await aioipc.dbus.connect(address) as bus:
        await bus.export(PATH, Greeter())
        await bus.request_name(NAME)
        print(f"serving {NAME} as {bus.unique_name}")
        if args.serve:
            await asyncio.sleep(args.serve)
        else:
            await client(address)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=float, metavar="SECONDS", help="only serve, for this long")
    aioipc.run(main(parser.parse_args()), exit_quietly=True)
