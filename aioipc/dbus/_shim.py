"""Every private attribute of dbus-fast that aioipc touches, in one place.

dbus-fast has no public way to do three things aioipc needs, so they are
done here, and only here, through these attributes of its ``MessageBus``:

- ``_disconnected`` (bool): the connection ended; a reply an exported method
  sends after that is dropped instead of written to a closed socket.
- ``_loop`` (the bus's event loop): to hand back an already-finished write.
- ``_method_return_handlers`` (dict serial -> callback): a call nobody
  waits for any more (cancelled, timed out) forgets its handler at once.

``tests/test_dbus.py`` checks that a connected bus still has each of them,
with the type named in :data:`PRIVATE_ATTRIBUTES`, so a dbus-fast upgrade that
changes them fails that test loudly rather than aioipc quietly.
"""

from __future__ import annotations

import asyncio

from dbus_fast import Message
from dbus_fast.aio import MessageBus

__all__ = ["PRIVATE_ATTRIBUTES", "QuietMessageBus", "forget_reply"]

#: the private attributes read here, and the type each must have on a connected bus
PRIVATE_ATTRIBUTES: dict[str, type] = {
    "_disconnected": bool,
    "_loop": asyncio.AbstractEventLoop,
    "_method_return_handlers": dict,
}


class QuietMessageBus(MessageBus):
    """dbus-fast's bus, made quiet about messages sent after the connection ended."""

    __slots__ = ()

    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]  # as dbus-fast's aio bus
        if self._disconnected:
            # A reply from an exported method that finishes after the connection ended: drop it,
            # instead of writing to the closed socket and raising from a loop callback.
            dropped: asyncio.Future[None] = self._loop.create_future()
            dropped.set_result(None)
            return dropped
        return super().send(msg)


def forget_reply(bus: MessageBus, serial: int) -> None:
    """Drop the reply handler of call ``serial``: nobody waits for that reply any more."""
    bus._method_return_handlers.pop(serial, None)
