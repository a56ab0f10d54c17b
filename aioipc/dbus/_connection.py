"""One D-Bus connection as aioipc uses it: calls, the bus daemon's methods, subscribers, end of life.

:class:`Connection` is what :class:`aioipc.dbus.Bus` stands on, and the
:class:`~aioipc.dbus._signals.SignalSource` a signal stream gets: the stream
sees this small interface, never the ``Bus``.

Rule 1: every message the connection receives goes, in bus order and
synchronously, to each attached subscriber.
Rule 2: when the connection ends, each subscriber is told once: closed by
us (``None``) or lost (the error).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import anyio
from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from .._core.errors import DBusError, map_exceptions
from ._shim import forget_reply

__all__ = ["Connection", "Subscriber"]

_DAEMON = "org.freedesktop.DBus"
_DAEMON_PATH = "/org/freedesktop/DBus"


class Subscriber(Protocol):
    """What the connection calls on a signal stream."""

    def _on_message(self, msg: Message) -> None: ...

    def _bus_ended(self, lost: BaseException | None) -> None: ...


class Connection:
    """A connected dbus-fast ``MessageBus`` with aioipc's error mapping and subscribers."""

    def __init__(self, message_bus: MessageBus) -> None:
        self.message_bus = message_bus
        self.closing = False
        self.lost: BaseException | None = None
        self._subscribers: set[Subscriber] = set()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        message_bus.add_message_handler(self._dispatch)

    async def close(self) -> None:
        """Disconnect (idempotent) and wait until every subscriber was told."""
        if not self.closing:
            self.closing = True
            self.message_bus.disconnect()
        await asyncio.shield(self._watcher)

    def usable(self) -> bool:
        return not self.closing and self.lost is None and self.message_bus.connected

    def check_usable(self) -> None:
        if self.closing:
            raise anyio.ClosedResourceError
        if not self.usable():
            raise anyio.BrokenResourceError("the D-Bus connection was lost") from self.lost

    def daemon_message(
        self, member: str, signature: str, body: list[Any], flags: MessageFlag = MessageFlag.NONE
    ) -> Message:
        """A call of the bus daemon's ``member`` (``AddMatch``, ``RequestName`` ...)."""
        serial = self.message_bus.next_serial()
        return Message(
            _DAEMON, _DAEMON_PATH, _DAEMON, member, signature=signature, body=body, flags=flags, serial=serial
        )

    def send_no_reply(self, msg: Message) -> None:
        """Queue ``msg`` without waiting for it to be written (nor for a reply)."""
        written = self.message_bus.send(msg)
        # A write that fails because the connection died is reported by the bus itself.
        written.add_done_callback(lambda fut: fut.cancelled() or fut.exception())

    async def send(self, msg: Message) -> None:
        """Write ``msg`` (a signal); closed or lost connections raise anyio's errors."""
        self.check_usable()
        try:
            await self.message_bus.send(msg)
        except (EOFError, OSError):
            with map_exceptions("the D-Bus connection", closed=self.closing):
                raise

    async def send_call(self, msg: Message, timeout: float | None, *, raise_errors: bool = True) -> list[Any]:
        """Send a method call and return the reply's body; an error reply is ``DBusError``."""
        self.check_usable()
        try:
            if timeout is None:
                reply = await self.message_bus.call(msg)
            else:
                async with asyncio.timeout(timeout):
                    reply = await self.message_bus.call(msg)
        except BaseException as exc:
            # Nobody waits for this reply any more: forget its handler now rather than when
            # (or if) the reply comes.
            forget_reply(self.message_bus, msg.serial)
            if isinstance(exc, EOFError | OSError):
                with map_exceptions("the D-Bus connection", closed=self.closing):
                    raise
            raise
        if reply.message_type is MessageType.ERROR and raise_errors:
            raise DBusError.from_reply(reply)
        return list(reply.body)

    def attach(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)

    def detach(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def _dispatch(self, msg: Message) -> None:
        for subscriber in tuple(self._subscribers):
            subscriber._on_message(msg)

    async def _watch(self) -> None:
        try:
            await self.message_bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except Exception as exc:
            self.lost = exc
        for subscriber in tuple(self._subscribers):
            subscriber._bus_ended(self.lost)
