"""NATS, shared by the patterns that reach past one machine (``aioipc.rpc``, ``aioipc.pubsub``).

One place says what a NATS address looks like and imports nats-py (the
``nats`` extra) on first use, so ``import aioipc`` never needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

import anyio

__all__ = ["FirstRoundTrip", "close_nats", "import_nats", "is_nats_address"]


def is_nats_address(address: object) -> bool:
    """Whether ``address`` names a NATS server (``nats://host:port``, with a subject path for rpc)."""
    return isinstance(address, str) and address.startswith("nats://")


def import_nats() -> Any:
    """The ``nats`` module of nats-py.

    Raises:
        ImportError: nats-py is not installed; the message names the extra.
    """
    try:
        return importlib.import_module("nats")
    except ImportError as exc:
        raise ImportError("nats:// addresses need nats-py: pip install 'aioipc[nats]'") from exc


async def close_nats(client: Any, timeout: float = 5) -> None:
    """Close a nats-py client to the end, even while the caller is being cancelled (at most ``timeout`` s).

    A close cut short by a cancellation leaves nats-py's transport open, and
    an event loop then waits for it forever when it closes (uvloop does).
    """
    if client is None or client.is_closed:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
        await client.close()


class FirstRoundTrip:
    """One PING/PONG round trip before a connection's first message, then none.

    nats-server 2.9.10 dropped, in 35 of 800 tries, what a connection opened
    before a subscription published in the moments right after it (a
    publisher connected before its subscribers; an rpc client connected
    before its server); with this round trip first, 0 of 800.
    """

    __slots__ = ("due",)

    def __init__(self) -> None:
        self.due = True  # test it before awaiting make(): a later message then awaits nothing more

    async def make(self, client: Any, timeout: float = 10.0) -> None:
        """Make the round trip on ``client``; nats-py's errors pass through (it is still due then)."""
        await client.flush(timeout=timeout)
        self.due = False
