"""D-Bus, the message bus of the Linux desktop and of system services, on dbus-fast.

Needs the extra: ``pip install 'aioipc[dbus]'``.

Example::

    import aioipc.dbus

    async with await aioipc.dbus.connect("session") as bus:
        [names] = await bus.call(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames"
        )
        async with bus.signals(interface="org.example.Chat", member="Said") as sigs:
            async for sig in sigs:
                print(sig.sender, sig.body)

Publishing an object: subclass dbus-fast's :class:`ServiceInterface`
(re-exported here with :func:`dbus_method`, :func:`dbus_signal` and
:func:`dbus_property`), then ``await bus.export(path, obj)`` and
``await bus.request_name("org.example.Chat")``. Emit signals by calling a
``@dbus_signal`` method of the exported object, or with :meth:`Bus.emit`.

Caveats:
    dbus-fast runs on asyncio: a :class:`Bus` belongs to the loop that
    connected it (the stock loop or uvloop). Methods of an exported object
    that raise anything but a :class:`DBusError` answer the caller with
    dbus-fast's ``com.dubstepdish.dbus.next.ServiceError`` (the exception's
    type name only) and log the traceback locally.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

try:
    import dbus_fast  # noqa: F401  # only to name the extra when it is missing
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    if exc.name != "dbus_fast":
        raise
    raise ModuleNotFoundError(
        "aioipc.dbus needs dbus-fast, which is not installed: pip install 'aioipc[dbus]'", name=exc.name
    ) from exc

import anyio
import anyio.abc
from dbus_fast import BusType, Message, MessageType, RequestNameReply, Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal
from dbus_fast.signature import get_signature_tree

from .._core.errors import AddressInUse, DBusError
from ._connection import Connection
from ._shim import QuietMessageBus
from ._signals import DEFAULT_MAX_BUFFER, Signal, SignalStream, match_rule

__all__ = [
    "Bus",
    "DBusError",
    "Proxy",
    "RequestNameReply",
    "ServiceInterface",
    "Signal",
    "SignalStream",
    "Variant",
    "connect",
    "dbus_method",
    "dbus_property",
    "dbus_signal",
    "list_names",
    "match_rule",
    "signals",
]

_PROPERTIES = "org.freedesktop.DBus.Properties"

# RequestName flags and replies (D-Bus specification, "org.freedesktop.DBus.RequestName").
_ALLOW_REPLACEMENT = 0x1
_REPLACE_EXISTING = 0x2
_DO_NOT_QUEUE = 0x4


class Bus(anyio.abc.AsyncResource):
    """A connection to a D-Bus message bus. Get one with :func:`connect`.

    An async context manager; leaving the block (or :meth:`aclose`)
    disconnects. Calls made after that raise ``anyio.ClosedResourceError``;
    calls in flight, or made after the bus daemon went away, raise
    ``anyio.BrokenResourceError``.

    Attributes:
        unique_name: this connection's unique name on the bus (``:1.42``).
        message_bus: the underlying ``dbus_fast.aio.MessageBus``, for what this class does not cover.
    """

    def __init__(self, message_bus: MessageBus) -> None:
        self.message_bus = message_bus
        self.unique_name: str = message_bus.unique_name or ""
        self._connection = Connection(message_bus)

    def __repr__(self) -> str:
        connection = self._connection
        state = "closed" if connection.closing else "lost" if connection.lost else "open"
        return f"<aioipc.dbus.Bus {self.unique_name} {state}>"

    async def aclose(self) -> None:
        """Disconnect from the bus; idempotent. Exported objects and names go with the connection."""
        await self._connection.close()

    # -- method calls ---------------------------------------------------------------------------

    async def call(
        self,
        destination: str | None,
        path: str,
        interface: str | None,
        member: str,
        signature: str = "",
        body: Iterable[Any] = (),
        timeout: float | None = None,
    ) -> list[Any]:
        """Call a method and return the reply's body (its out arguments) as a list.

        ``timeout`` is in seconds; None waits until the reply or an error
        comes (the bus answers ``NoReply`` if the callee leaves without replying).

        Raises:
            DBusError: the callee (or the bus) answered with an error; ``.name`` is the D-Bus error name.
            TimeoutError: no reply within ``timeout``.
            TypeError / ValueError: a bad name or path, or a body that does not match ``signature``
                (dbus-fast's errors), before anything is sent.
            anyio.BrokenResourceError: the connection to the bus was lost.
            anyio.ClosedResourceError: this bus was closed.

        Example::

            [reply] = await bus.call("org.example.Chat", "/chat", "org.example.Chat", "Echo", "s", ["hi"])
        """
        body = _checked_body(signature, body)
        serial = self.message_bus.next_serial()
        msg = Message(destination, path, interface, member, signature=signature, body=body, serial=serial)
        return await self._connection.send_call(msg, timeout)

    async def proxy(
        self, destination: str, path: str, interface: str, *, timeout: float | None = None
    ) -> Proxy:
        """Introspect ``destination`` at ``path`` and return a :class:`Proxy` for ``interface``.

        Raises:
            ValueError: the object does not have that interface.
            DBusError, TimeoutError, anyio.BrokenResourceError: as :meth:`call`.

        Example::

            chat = await bus.proxy("org.example.Chat", "/chat", "org.example.Chat")
            print(await chat.Echo("hi"))
        """
        [xml] = await self.call(
            destination, path, "org.freedesktop.DBus.Introspectable", "Introspect", timeout=timeout
        )
        node = intr.Node.parse(xml)
        for found in node.interfaces:
            if found.name == interface:
                return Proxy(self, destination, path, found, timeout=timeout)
        names = ", ".join(i.name for i in node.interfaces) or "none"
        raise ValueError(f"{destination} has no interface {interface} at {path} (it has: {names})")

    # -- names ----------------------------------------------------------------------------------

    async def request_name(
        self, name: str, *, queue: bool = False, replace: bool = False, allow_replacement: bool = False
    ) -> RequestNameReply:
        """Own the well-known ``name`` on the bus (released when the bus closes).

        By default this is exclusive: if another connection owns the name,
        the request fails instead of waiting in the queue. ``queue=True``
        waits in line (returns ``RequestNameReply.IN_QUEUE``); ``replace``
        takes the name from an owner that allowed replacement;
        ``allow_replacement`` lets a later ``replace`` take it from us.

        Returns:
            ``PRIMARY_OWNER``, ``ALREADY_OWNER`` or (with ``queue``) ``IN_QUEUE``.

        Raises:
            AddressInUse: another connection owns the name (and ``queue`` is False).
            DBusError: the bus refused (e.g. ``AccessDenied`` by the system bus policy).
        """
        flags = (
            (0 if queue else _DO_NOT_QUEUE)
            | (_REPLACE_EXISTING if replace else 0)
            | (_ALLOW_REPLACEMENT if allow_replacement else 0)
        )
        [reply] = await self._connection.send_call(
            self._connection.daemon_message("RequestName", "su", [name, flags]), None
        )
        result = RequestNameReply(reply)
        if result is RequestNameReply.EXISTS:
            raise AddressInUse(f"dbus name {name}")
        return result

    async def release_name(self, name: str) -> None:
        """Give up the well-known ``name`` (nothing happens if we do not own it)."""
        await self._connection.send_call(self._connection.daemon_message("ReleaseName", "s", [name]), None)

    # -- exporting and emitting -----------------------------------------------------------------

    async def export(self, path: str, obj: ServiceInterface) -> None:
        """Publish ``obj`` (a dbus-fast ``ServiceInterface``) at object ``path``.

        Its ``@dbus_method`` methods (plain or ``async def``) answer calls,
        its ``@dbus_property`` attributes answer ``org.freedesktop.DBus.Properties``,
        introspection is answered for you, and calling one of its
        ``@dbus_signal`` methods emits that signal from ``path``.

        Raises:
            ValueError: an interface of that name is already exported at ``path``.
            TypeError: ``path`` is not a valid object path, or ``obj`` is not a ``ServiceInterface``.
        """
        self._connection.check_usable()
        self.message_bus.export(path, obj)

    def unexport(self, path: str, obj: ServiceInterface | str | None = None) -> None:
        """Withdraw ``obj`` (an interface or its name), or everything, from ``path``."""
        self.message_bus.unexport(path, obj)

    async def emit(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Iterable[Any] = (),
        *,
        destination: str | None = None,
    ) -> None:
        """Emit a signal from ``path``; returns once it is written to the bus.

        ``destination`` makes it a unicast signal to one connection.

        Raises:
            TypeError / ValueError: bad names, or a body that does not match ``signature``.
            anyio.BrokenResourceError / anyio.ClosedResourceError: as :meth:`call`.
        """
        body = _checked_body(signature, body)
        msg = Message(
            destination,
            path,
            interface,
            member,
            message_type=MessageType.SIGNAL,
            signature=signature,
            body=body,
        )
        await self._connection.send(msg)

    # -- signals --------------------------------------------------------------------------------

    def signals(
        self,
        sender: str | None = None,
        path: str | None = None,
        interface: str | None = None,
        member: str | None = None,
        *,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> SignalStream:
        """Signals matching these fields (None: any), as ``async with bus.signals(...) as sigs``.

        The match rule is added on entering the block (it is active when the
        block starts) and removed on leaving it. ``sender`` may be a unique
        name or a well-known name (followed as its owner changes). At most
        ``max_buffer`` signals wait for a slow consumer; beyond that the
        oldest is dropped and counted in ``sigs.dropped``.

        Raises:
            TypeError: a field is not a valid name or path.
            ValueError: ``max_buffer`` is below 1.
        """
        return SignalStream(
            self._connection,
            sender=sender,
            path=path,
            interface=interface,
            member=member,
            max_buffer=max_buffer,
        )


def _checked_body(signature: str, body: Iterable[Any]) -> list[Any]:
    """``body`` as a list, checked against ``signature`` (``SignatureBodyMismatchError``, a ValueError)."""
    checked = list(body)
    get_signature_tree(signature).verify(checked)
    return checked


class Proxy:
    """One interface of a remote object; its methods are attributes.

    ``await proxy.Member(*args)`` returns None for a method with no out
    arguments, the value for one, and a list for several. Properties are
    read with :meth:`get_property` and written with :meth:`set_property`.
    Get one with :meth:`Bus.proxy`.

    Raises:
        AttributeError: the interface has no such method (or property).
        DBusError, TimeoutError, anyio.BrokenResourceError: as :meth:`Bus.call`.
    """

    def __init__(
        self, bus: Bus, destination: str, path: str, interface: intr.Interface, *, timeout: float | None
    ) -> None:
        self.bus = bus
        self.destination = destination
        self.path = path
        self.interface = interface.name
        self.timeout = timeout
        self._methods = {m.name: m for m in interface.methods}
        self._properties = {p.name: p for p in interface.properties}

    def __repr__(self) -> str:
        return f"<aioipc.dbus.Proxy {self.destination} {self.path} {self.interface}>"

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        method = self.__dict__.get("_methods", {}).get(name)
        if method is None:
            raise AttributeError(f"{self.interface} has no method {name!r}")
        return functools.partial(self._invoke, method)

    async def _invoke(self, method: intr.Method, *args: Any) -> Any:
        body = await self.bus.call(
            self.destination, self.path, self.interface, method.name, method.in_signature, args, self.timeout
        )
        if not body:
            return None
        return body[0] if len(body) == 1 else body

    async def get_property(self, name: str) -> Any:
        """The value of property ``name`` (``Properties.Get``), unwrapped from its variant."""
        self._property(name)
        [value] = await self.bus.call(
            self.destination, self.path, _PROPERTIES, "Get", "ss", [self.interface, name], self.timeout
        )
        return value.value

    async def set_property(self, name: str, value: Any) -> None:
        """Set property ``name``, wrapped in a variant of its introspected signature."""
        variant = Variant(self._property(name).signature, value)
        await self.bus.call(
            self.destination,
            self.path,
            _PROPERTIES,
            "Set",
            "ssv",
            [self.interface, name, variant],
            self.timeout,
        )

    def _property(self, name: str) -> intr.Property:
        try:
            return self._properties[name]
        except KeyError:
            raise AttributeError(f"{self.interface} has no property {name!r}") from None

    def signals(self, member: str | None = None, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> SignalStream:
        """Signals of this interface from this object (``member``: one signal only)."""
        return self.bus.signals(self.destination, self.path, self.interface, member, max_buffer=max_buffer)


async def connect(bus: str = "session", *, timeout: float | None = None) -> Bus:
    """Connect to ``"session"``, ``"system"``, or a D-Bus address (``unix:path=/run/x/bus``).

    ``"session"`` uses ``DBUS_SESSION_BUS_ADDRESS``, ``"system"`` the system
    bus (``DBUS_SYSTEM_BUS_ADDRESS`` or ``/run/dbus/system_bus_socket``).

    Raises:
        OSError: the bus socket cannot be reached (``FileNotFoundError``, ``ConnectionRefusedError``).
        ValueError: the address is malformed, or no session bus address is known
            (dbus-fast's ``InvalidAddressError``); authentication failed (``AuthError``).
        TimeoutError: not connected within ``timeout`` seconds.

    Example::

        async with await aioipc.dbus.connect("session") as bus:
            print(bus.unique_name)
    """
    if bus == "session":
        message_bus = QuietMessageBus(bus_type=BusType.SESSION)
    elif bus == "system":
        message_bus = QuietMessageBus(bus_type=BusType.SYSTEM)
    else:
        message_bus = QuietMessageBus(bus_address=bus)
    async with asyncio.timeout(timeout):
        await message_bus.connect()
    return Bus(message_bus)


# ``aioipc.dbus.signals(bus, member="X")``: the same as ``bus.signals(member="X")``.
signals = Bus.signals


async def list_names(bus: Bus, *, activatable: bool = False) -> list[str]:
    """The names on the bus, sorted: well-known names first, then unique names (``:1.42``).

    ``activatable=True`` lists the names the bus can start on demand instead.
    """
    [names] = await bus._connection.send_call(
        bus._connection.daemon_message("ListActivatableNames" if activatable else "ListNames", "", []), None
    )
    return sorted(names, key=lambda name: (name.startswith(":"), name))
