"""aioipc: Linux inter-process communication as asyncio streams.

Every mechanism is an anyio-compatible stream that you ``await`` and
``async for``::

    import aioipc

    async def main() -> None:
        r, w = aioipc.pipe()
        async with aioipc.framed(r) as rx, aioipc.framed(w) as tx:
            await tx.send(b"hello")
            print(await rx.receive())

    aioipc.run(main())
"""

from __future__ import annotations

from . import (
    fifo,
    files,
    mq,
    pipes,
    process,
    pubsub,
    rpc,
    shm,
    shutdown,
    signals,
    sockets,
    spool,
    sync,
    systemd,
)
from ._core.attributes import IPCAttribute, PeerCredentials
from ._core.errors import AddressInUse, FrameTooLarge, IPCError, PeerDied, ProtocolError, TruncatedMessage
from ._core.objects import Codec, ObjectStream
from ._core.runner import run
from ._core.schemes import Address, available_schemes, connect, parse_address, serve
from ._core.server import Server
from ._core.streams import (
    ByteReceiveStream,
    ByteSendStream,
    ByteStream,
    MessageReceiveStream,
    MessageSendStream,
    MessageStream,
    framed,
)
from .pipes import pipe
from .process import parent_channel, spawn
from .shutdown import graceful_shutdown

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AddressInUse",
    "ByteReceiveStream",
    "ByteSendStream",
    "ByteStream",
    "Codec",
    "FrameTooLarge",
    "IPCAttribute",
    "IPCError",
    "MessageReceiveStream",
    "MessageSendStream",
    "MessageStream",
    "ObjectStream",
    "PeerCredentials",
    "PeerDied",
    "ProtocolError",
    "Server",
    "TruncatedMessage",
    "available_schemes",
    "connect",
    "fifo",
    "files",
    "framed",
    "graceful_shutdown",
    "mq",
    "parent_channel",
    "parse_address",
    "pipe",
    "pipes",
    "process",
    "pubsub",
    "rpc",
    "run",
    "serve",
    "shm",
    "shutdown",
    "signals",
    "sockets",
    "spawn",
    "spool",
    "sync",
    "systemd",
]


def __getattr__(name: str) -> object:
    # aioipc.sysv and aioipc.dbus need optional extras: import them on first use only.
    if name in ("dbus", "sysv"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'aioipc' has no attribute {name!r}")
