"""D-Bus signals as an async stream: the match rule, local filtering, bounded buffering.

Rule 1: a :class:`SignalStream` subscribes on ``__aenter__`` (its match rule
is active on the bus when the block starts) and unsubscribes on exit.
Rule 2: the connection receives every signal any of its rules (or a unicast
to it) selects, so each stream filters again locally; a well-known sender
name is followed to its current unique owner through ``NameOwnerChanged``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
from dbus_fast import Message, MessageFlag, MessageType, validators

from .._core.streams import ResourceGuard

__all__ = ["DEFAULT_MAX_BUFFER", "Signal", "SignalSource", "SignalStream", "match_rule"]

DEFAULT_MAX_BUFFER = 1024

_DAEMON = "org.freedesktop.DBus"

# Each field of a match rule, and dbus-fast's check of it (a TypeError when it is not valid).
_VALIDATORS: dict[str, Callable[[str], object]] = {
    "sender": validators.assert_bus_name_valid,
    "path": validators.assert_object_path_valid,
    "interface": validators.assert_interface_name_valid,
    "member": validators.assert_member_name_valid,
}


@dataclass(frozen=True, slots=True)
class Signal:
    """One received D-Bus signal."""

    sender: str
    """The unique name (``:1.42``) of the connection that emitted it, or ``org.freedesktop.DBus``."""
    path: str
    interface: str
    member: str
    signature: str
    body: list[Any]
    """The arguments, unpacked as dbus-fast does (``Variant`` kept for ``v``)."""


def match_rule(
    *,
    sender: str | None = None,
    path: str | None = None,
    interface: str | None = None,
    member: str | None = None,
    arg0: str | None = None,
) -> str:
    """Build the ``AddMatch`` rule for signals with these fields (None: any).

    Raises:
        TypeError: a field is not a valid bus name, object path, interface or member name
            (dbus-fast's ``InvalidBusNameError`` and friends).
    """
    fields = {"sender": sender, "path": path, "interface": interface, "member": member, "arg0": arg0}
    for key, check in _VALIDATORS.items():
        if (value := fields[key]) is not None:
            check(value)
    if arg0 is not None and ("'" in arg0 or "\\" in arg0):
        raise ValueError(f"arg0 must not contain quotes or backslashes: {arg0!r}")
    # Validated names cannot contain quotes, so no escaping is needed.
    return ",".join(["type='signal'", *(f"{key}='{value}'" for key, value in fields.items() if value)])


class SignalSource(Protocol):
    """What a :class:`SignalStream` needs from its bus connection, and all it uses of it."""

    def check_usable(self) -> None:
        """Raise ``ClosedResourceError``/``BrokenResourceError`` if the connection cannot be used."""

    def usable(self) -> bool:
        """Whether the connection is open."""

    def attach(self, subscriber: SignalStream) -> None:
        """Start calling ``subscriber._on_message`` with every message, and ``_bus_ended`` at the end."""

    def detach(self, subscriber: SignalStream) -> None:
        """Stop calling ``subscriber``."""

    def daemon_message(
        self, member: str, signature: str, body: list[Any], flags: MessageFlag = MessageFlag.NONE
    ) -> Message:
        """A call of the bus daemon's ``member``, with its serial assigned."""

    async def send_call(self, msg: Message, timeout: float | None, *, raise_errors: bool = True) -> list[Any]:
        """Send a call and wait for its reply's body."""

    def send_no_reply(self, msg: Message) -> None:
        """Queue a message; wait for nothing."""


class SignalStream(anyio.abc.ObjectReceiveStream[Signal]):
    """Signals that match a rule, as an anyio ``ObjectReceiveStream[Signal]``.

    Get one from :meth:`aioipc.dbus.Bus.signals`; use it as
    ``async with bus.signals(...) as sigs: async for sig in sigs``.

    Buffering policy: at most ``max_buffer`` signals wait for the consumer;
    when the buffer is full the **oldest** waiting signal is dropped and
    :attr:`dropped` counts it. The bus connection itself never stalls for a
    slow consumer.

    End of life: leaving the block (or :meth:`aclose`) removes the match
    rule; ``receive()`` after that is ``ClosedResourceError``. Once the bus
    is closed with ``aclose()``, the stream hands out what it buffered and
    then ends (``EndOfStream``; ``async for`` stops); if the bus connection
    was lost, it ends with ``BrokenResourceError`` instead.
    """

    def __init__(
        self,
        source: SignalSource,
        *,
        sender: str | None = None,
        path: str | None = None,
        interface: str | None = None,
        member: str | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, not {max_buffer}")
        self._rule = match_rule(sender=sender, path=path, interface=interface, member=member)
        self._source = source
        self.sender = sender
        self.path = path
        self.interface = interface
        self.member = member
        self.max_buffer = max_buffer
        self.dropped = 0
        """How many signals were dropped because the buffer was full."""
        self._buffer: deque[Signal] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._guard = ResourceGuard("receiving")
        self._rules: list[str] = []
        self._state = "new"  # new -> open -> closed
        self._bus_gone = False
        self._lost: BaseException | None = None
        # Following a well-known sender name to its unique owner.
        self._follows = sender is not None and not sender.startswith(":") and sender != _DAEMON
        self._owner: str | None = sender if not self._follows else None
        self._owner_serial = 0

    def __repr__(self) -> str:
        return f"<SignalStream {self._rule!r} {self._state} buffered={len(self._buffer)}>"

    async def __aenter__(self) -> SignalStream:
        if self._state != "new":
            raise RuntimeError("a SignalStream can be entered only once")
        self._source.check_usable()
        self._state = "open"
        self._source.attach(self)
        try:
            if self._follows:
                assert self.sender is not None
                await self._add_rule(match_rule(sender=_DAEMON, member="NameOwnerChanged", arg0=self.sender))
                query = self._source.daemon_message("GetNameOwner", "s", [self.sender])
                self._owner_serial = query.serial
                # The owner is recorded by _on_message, in bus order with NameOwnerChanged;
                # an error reply (NameHasNoOwner) leaves it unknown.
                await self._source.send_call(query, None, raise_errors=False)
            await self._add_rule(self._rule)
        except BaseException:
            self._unsubscribe()
            raise
        return self

    async def _add_rule(self, rule: str) -> None:
        await self._source.send_call(self._source.daemon_message("AddMatch", "s", [rule]), None)
        self._rules.append(rule)

    def _unsubscribe(self) -> None:
        self._state = "closed"
        self._source.detach(self)
        if self._source.usable():
            for rule in self._rules:
                # Fire and forget, so leaving the block never waits and is safe under cancellation;
                # the bus handles messages from one connection in order.
                self._source.send_no_reply(
                    self._source.daemon_message("RemoveMatch", "s", [rule], MessageFlag.NO_REPLY_EXPECTED)
                )
        self._rules.clear()
        self._wake()

    async def aclose(self) -> None:
        """Remove the match rule and stop receiving; idempotent."""
        if self._state == "open":
            self._unsubscribe()
        self._state = "closed"
        self._buffer.clear()

    async def receive(self) -> Signal:
        """Wait for the next matching signal.

        Raises:
            anyio.EndOfStream: the bus was closed with ``aclose()`` and the buffer is empty.
            anyio.BrokenResourceError: the bus connection was lost.
            anyio.ClosedResourceError: this stream was closed (or never entered).
            anyio.BusyResourceError: another task is receiving on this stream.
        """
        with self._guard:
            while not self._buffer:
                if self._state != "open":
                    raise anyio.ClosedResourceError
                if self._bus_gone and self._lost is None:
                    raise anyio.EndOfStream
                if self._bus_gone:
                    raise anyio.BrokenResourceError("the D-Bus connection was lost") from self._lost
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            return self._buffer.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _bus_ended(self, lost: BaseException | None) -> None:
        """Called by the bus once its connection is gone: closed by us (None), or lost with ``lost``."""
        self._bus_gone = True
        self._lost = lost
        self._wake()

    def _on_message(self, msg: Message) -> None:
        """Called by the bus, synchronously and in bus order, for every message it receives."""
        if msg.message_type is not MessageType.SIGNAL:
            if msg.reply_serial == self._owner_serial and msg.message_type is MessageType.METHOD_RETURN:
                self._owner = msg.body[0]
            return
        if (
            self._follows
            and msg.sender == _DAEMON
            and msg.member == "NameOwnerChanged"
            and msg.body
            and msg.body[0] == self.sender
        ):
            self._owner = msg.body[2] or None
            return
        if (
            (self.sender is not None and msg.sender != self._owner)
            or (self.path is not None and msg.path != self.path)
            or (self.interface is not None and msg.interface != self.interface)
            or (self.member is not None and msg.member != self.member)
        ):
            return
        if len(self._buffer) >= self.max_buffer:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(
            Signal(
                sender=msg.sender or "",
                path=msg.path or "",
                interface=msg.interface or "",
                member=msg.member or "",
                signature=msg.signature,
                body=list(msg.body),
            )
        )
        self._wake()
