"""The ``aioipc`` command: send, receive and relay messages at any address.

Examples::

    aioipc recv unix:/tmp/app.sock --count 1 &     # serve, print one message
    aioipc send unix:/tmp/app.sock hello
    echo hi | aioipc send fifo:/tmp/app.fifo -      # one message per line
    aioipc relay tcp:127.0.0.1:9000 unix:/tmp/app.sock
    aioipc pub unix:/tmp/ev.sock orders.new hi &    # bind, wait for a subscriber, publish
    aioipc sub unix:/tmp/ev.sock 'orders.>' --count 1 --wait 5
    aioipc ls                                       # queues, segments, rings, semaphores
    aioipc ls spool:/var/spool/app                  # the depth of a spool
    aioipc rm mq:/jobs sysvmq:0x1234 --stale

Exit status: 0 on success, 1 on an IPC error (the message says which), 2 on
bad usage, 128+signum after SIGINT or SIGTERM (``recv`` and ``relay`` first
close what they created: the FIFO, the socket file, the queue).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from .._core.errors import IPCError
from .._core.runner import run
from .._core.schemes import SCHEMES, Framing, available_schemes, connect, parse_address, serve
from ..shutdown import graceful_shutdown
from ._command import add_command, add_message_argument
from ._inventory import add_commands
from ._pubsub import add_commands as add_pubsub_commands
from ._rpc import add_commands as add_rpc_commands

_SYNC_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

__all__ = ["main"]

_SCHEMES_HELP = "\n".join(f"  {scheme.syntax}" for scheme in SCHEMES.values())


class _Failure(Exception):
    """An error worded for the user: what failed, where, and what to do about it."""


def _version() -> str:
    try:
        return importlib.metadata.version("aioipc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_GLOBAL_FLAGS = ("--loop",)  # each takes one value


def _hoist_global_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with the global flags moved before the command, so they may be written after it too."""
    hoisted: list[str] = []
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        if item == "--":
            rest += [item, *items]
        elif item in _GLOBAL_FLAGS:
            hoisted += [item, next(items, "")]
        elif item.split("=", 1)[0] in _GLOBAL_FLAGS:
            hoisted.append(item)
        else:
            rest.append(item)
    return hoisted + rest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioipc",
        description="Send, receive and relay messages over Linux IPC.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (default: auto); like every global flag, it may also follow the command",
    )
    parser.add_argument("--version", action="version", version=f"aioipc {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    send = add_command(
        commands,
        "send",
        "send messages to an address",
        "Connect to ADDR and send MESSAGE, or each line of standard input with '-' (the default).",
        "aioipc send --timeout 5 unix:/tmp/app.sock hello",
    )
    add_message_argument(send, "send")
    _add_framing_flags(send)
    send.add_argument("--timeout", type=float, default=None, help="seconds to wait for the peer")

    recv = add_command(
        commands,
        "recv",
        "receive messages at an address",
        "Create ADDR (listen on a socket, make a FIFO) and print each message received, one per line. "
        "With --connect, open an existing object (a server, a queue) instead.",
        "aioipc recv --lines fifo:/tmp/app.fifo --count 2   # then: echo hi > /tmp/app.fifo",
    )
    recv.add_argument(
        "--count", type=int, default=None, metavar="N", help="stop after N messages (not with --raw)"
    )
    recv.add_argument("--connect", action="store_true", help="connect to ADDR instead of creating it")
    _add_framing_flags(recv)

    relay = add_command(
        commands,
        "relay",
        "relay between two addresses",
        "Serve FROM; for each connection, connect to TO and copy messages both ways (socat-like).",
        "aioipc relay tcp:127.0.0.1:9000 unix:/tmp/app.sock",
        address=None,
    )
    relay.add_argument("source", metavar="FROM")
    relay.add_argument("target", metavar="TO")
    _add_framing_flags(relay)

    add_command(
        commands,
        "schemes",
        "list the address schemes this installation handles",
        "List each address scheme, its syntax and what it is; a scheme that needs an extra says which.",
        "aioipc schemes",
        address=None,
    )
    _SYNC_COMMANDS.update(add_commands(commands))
    _SYNC_COMMANDS.update(add_rpc_commands(commands))
    _SYNC_COMMANDS.update(add_pubsub_commands(commands))
    examples = []
    for command in commands.choices.values():
        examples += [f"  {line.removeprefix('example: ')}" for line in (command.epilog or "").splitlines()]
    parser.epilog = "examples:\n" + "\n".join(examples) + f"\n\naddresses:\n{_SCHEMES_HELP}"
    return parser


def _add_framing_flags(parser: argparse.ArgumentParser) -> None:
    framing = parser.add_mutually_exclusive_group()
    framing.add_argument(
        "--raw", action="store_true", help="raw bytes, no framing (byte transports: sockets, FIFOs)"
    )
    framing.add_argument(
        "--lines",
        action="store_true",
        help="newline-delimited messages, as shell tools and socat speak (byte transports)",
    )


def _framing(args: argparse.Namespace, address: str) -> Framing:
    """The framing the flags ask for; message transports keep their own boundaries whatever they say."""
    if SCHEMES[parse_address(address).scheme].messages:
        return "length"
    return None if args.raw else "lines" if args.lines else "length"


def _explain(address: str, exc: OSError, creating: bool) -> str:
    """``exc`` (raised at ``address``) as one line: where, what, and what to do about it."""
    if isinstance(exc, TimeoutError | IPCError):
        return str(exc)  # these name the address already
    what = (exc.strerror or str(exc)).replace(", or pass exist_ok=True to use it", "")  # not for a shell
    scheme = SCHEMES[parse_address(address).scheme]
    if isinstance(exc, FileExistsError) and scheme.removable and "aioipc rm" not in what:
        what += f"; if no process uses it any more, remove it with `aioipc rm {address}`"
    elif exc.errno in (errno.ENOENT, errno.ECONNREFUSED) and not creating:
        what += f"; start the receiver first (aioipc recv {address}), or wait for it with --timeout SECONDS"
    elif exc.errno == errno.ENOENT:
        what += "; the directory must exist"
    return f"{address}: {what}"


async def _open(address: str, args: argparse.Namespace, **options: Any) -> Any:
    """``connect(address)``, its errors worded for the user."""
    try:
        return await connect(address, framing=_framing(args, address), **options)
    except OSError as exc:
        raise _Failure(_explain(address, exc, creating=False)) from None


async def _serve(address: str, handler: Any, args: argparse.Namespace) -> Any:
    """``serve(address)``, its errors worded for the user."""
    try:
        return await serve(address, handler, framing=_framing(args, address))
    except OSError as exc:
        raise _Failure(_explain(address, exc, creating=True)) from None


async def _send(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {} if args.timeout is None else {"timeout": args.timeout}
    async with await _open(args.address, args, **options) as stream:
        if args.message != "-":
            await stream.send(args.message.encode())
        elif args.raw:
            while chunk := await anyio.to_thread.run_sync(os.read, sys.stdin.fileno(), 65536):
                await stream.send(chunk)
        else:
            while line := await anyio.to_thread.run_sync(sys.stdin.buffer.readline):
                await stream.send(line.rstrip(b"\n"))
    return 0


def _print(data: bytes, raw: bool) -> None:
    sys.stdout.buffer.write(data if raw else data + b"\n")
    sys.stdout.buffer.flush()


async def _recv(args: argparse.Namespace) -> int:
    remaining = args.count
    done = asyncio.Event()

    async def consume(stream: Any) -> None:
        nonlocal remaining
        async for data in stream:
            if remaining is not None and remaining <= 0:
                break
            _print(data, args.raw)
            if remaining is not None:
                remaining -= 1
                if remaining <= 0:
                    done.set()
                    return

    if args.count is not None and _framing(args, args.address) is None:
        raise _Failure("--count counts messages, and --raw bytes have none: use --lines (or no flag)")
    if args.connect:
        async with await _open(args.address, args) as stream:
            await consume(stream)
        return 0
    async with graceful_shutdown(timeout=5) as sd, await _serve(args.address, consume, args) as server:
        print(f"receiving at {server.address}", file=sys.stderr, flush=True)
        await done.wait()
    return sd.exit_status


async def _pump(source: Any, target: Any) -> None:
    try:
        async for data in source:
            await target.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return
    if hasattr(target, "send_eof"):
        try:
            await target.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, NotImplementedError):
            pass


async def _relay(args: argparse.Namespace) -> int:
    async def bridge(incoming: Any) -> None:
        async with await _open(args.target, args) as outgoing, anyio.create_task_group() as tg:
            if hasattr(incoming, "receive"):
                tg.start_soon(_pump, incoming, outgoing)
            if hasattr(outgoing, "receive") and hasattr(incoming, "send"):
                tg.start_soon(_pump, outgoing, incoming)

    parse_address(args.target)
    async with graceful_shutdown(timeout=5) as sd, await _serve(args.source, bridge, args) as server:
        print(f"relaying {server.address} -> {args.target}", file=sys.stderr, flush=True)
        await server.serve_forever()
    return sd.exit_status


async def _list_bus_names(bus_name: str) -> int:
    try:
        from .. import dbus
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    try:
        bus = await dbus.connect(bus_name, timeout=10)
    except OSError as exc:
        raise _Failure(
            f"cannot reach the D-Bus {bus_name} bus ({exc.strerror or exc}): is a bus daemon running "
            "here? Try --dbus session, or a bus address such as unix:path=/run/dbus/system_bus_socket"
        ) from None
    async with bus:
        for name in await dbus.list_names(bus):
            print(name)
    return 0


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "ls" and args.dbus:
        return await _list_bus_names(args.dbus)
    if args.command == "send":
        return await _send(args)
    if args.command == "recv":
        return await _recv(args)
    if args.command == "relay":
        return await _relay(args)
    available = set(available_schemes())
    for scheme in SCHEMES.values():
        note = "" if scheme.name in available else f"  (needs: pip install 'aioipc[{scheme.extra}]')"
        print(f"{scheme.name:<15} {scheme.syntax:<45} {scheme.summary}{note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aioipc`` command; returns the exit status."""
    args = _parser().parse_args(_hoist_global_flags(sys.argv[1:] if argv is None else argv))
    try:
        if args.command in _SYNC_COMMANDS and not getattr(args, "dbus", None):
            return _SYNC_COMMANDS[args.command](args)
        return run(_dispatch(args), loop=args.loop)
    except KeyboardInterrupt:
        return 130
    except (_Failure, OSError, ValueError, TypeError, IPCError, anyio.BrokenResourceError) as exc:
        print(f"aioipc: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{os.fsdecode(exc.filename).replace(chr(0), '@', 1)}: {exc.strerror}"
    return text
