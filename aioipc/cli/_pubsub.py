"""``aioipc sub`` and ``aioipc pub``: subscribe and publish from a shell.

A ``unix:`` or ``tcp:`` publisher exists only while a program binds it, so
``aioipc pub`` binds one for the time of the command: it waits for
``--wait-subscribers N`` subscribers, publishes, lets them take the
messages (``--linger``), and exits. With a ``nats://`` address it only
publishes: the NATS server delivers. ``aioipc sub --wait S`` waits up to S
seconds for a publisher to bind the address::

    aioipc pub unix:/tmp/ev.sock orders.created '{"id": 1}' &
    aioipc sub unix:/tmp/ev.sock 'orders.>' --count 1 --wait 5
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import graceful_shutdown, pubsub, run
from ..pubsub import POLICIES, LocalPublisher
from ._command import add_command, add_message_argument

__all__ = ["add_commands"]


async def _stdin_lines() -> AsyncIterator[bytes]:
    """Lines of standard input (without their newline), read by a daemon thread.

    A blocking read cannot be interrupted, and a worker thread the
    interpreter waits for at exit would keep Ctrl-C from ending the command
    until the next line came. A daemon thread is simply left behind; it
    reads the fd with ``os.read``, because a daemon thread inside
    ``sys.stdin``'s buffered reader at exit aborts the interpreter.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)  # the thread waits while it is full

    def read() -> None:
        try:
            while True:
                chunk = os.read(sys.stdin.fileno(), 65536)
                asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
                if not chunk:
                    return
        except (OSError, RuntimeError, concurrent.futures.CancelledError):
            pass  # stdin is unreadable, or the loop is gone: nobody wants the rest

    threading.Thread(target=read, name="aioipc pub stdin", daemon=True).start()
    pending = b""
    while chunk := await chunks.get():
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line
    if pending:
        yield pending


async def _sub(args: argparse.Namespace) -> int:
    async with (
        graceful_shutdown(timeout=5) as sd,
        await pubsub.subscribe(args.address, *args.subjects, timeout=args.wait) as sub,
    ):
        print(f"subscribed at {args.address}: {' '.join(sub.patterns)}", file=sys.stderr, flush=True)
        remaining = args.count
        out = sys.stdout.buffer
        async for subject, payload in sub:
            out.write(subject.encode() + b" " + payload + b"\n")
            out.flush()
            if remaining is not None:
                remaining -= 1
                if remaining <= 0:
                    break
        if sub.dropped:
            print(f"aioipc: {sub.dropped} messages were dropped (too slow)", file=sys.stderr)
    return sd.exit_status


async def _pub(args: argparse.Namespace) -> int:
    pubsub.check_subject(args.subject)  # before waiting for subscribers
    async with (
        graceful_shutdown(timeout=5) as sd,
        await pubsub.publisher(args.address, linger=args.linger, **_policy(args)) as pub,
    ):
        if isinstance(pub, LocalPublisher):
            print(f"publishing at {pub.address}", file=sys.stderr, flush=True)
            try:
                await pub.wait_for_subscribers(args.wait_subscribers, timeout=args.timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"fewer than {args.wait_subscribers} subscribers came within {args.timeout} s"
                ) from None
        if args.message != "-":
            await pub.publish(args.subject, args.message.encode())
        else:
            async for line in _stdin_lines():
                await pub.publish(args.subject, line)
    return sd.exit_status


def _policy(args: argparse.Namespace) -> dict[str, Any]:
    """A local publisher blocks by default (a shell pipeline loses no line); NATS has no policy."""
    if args.policy is None and pubsub.is_nats(args.address):
        return {}
    return {"policy": args.policy or "block"}


def _run(command: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def main(args: argparse.Namespace) -> int:
        try:
            status: int = run(command(args), loop=args.loop)
        except ImportError as exc:  # nats:// without nats-py
            raise ValueError(str(exc)) from None
        return status

    return main


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def add_commands(commands: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``sub`` and ``pub`` to the ``aioipc`` parser; return their functions by name."""
    sub = add_command(
        commands,
        "sub",
        "subscribe to subjects and print what is published",
        "Subscribe at the publisher bound at ADDR (unix:, tcp:) or through a NATS server "
        "(nats://host:port) and print each message as one line: the subject, a space, the payload. "
        "SUBJECT follows NATS rules: '*' matches one token, '>' the rest.",
        "aioipc sub unix:/tmp/events.sock 'orders.>' --count 1",
    )
    sub.add_argument("subjects", metavar="SUBJECT", nargs="+")
    sub.add_argument("--count", type=int, default=None, metavar="N", help="stop after N messages")
    sub.add_argument(
        "--wait", type=_seconds, default=None, metavar="SECONDS", help="wait for a publisher to appear"
    )
    pub = add_command(
        commands,
        "pub",
        "publish a message on a subject",
        "Publish MESSAGE, or each line of standard input with '-', on SUBJECT. For a unix: or tcp: "
        "ADDR, bind a publisher there for the time of the command: wait for --wait-subscribers "
        "subscribers, publish, give them --linger seconds to take it all, exit. For nats:// just "
        "publish through the NATS server.",
        "aioipc pub unix:/tmp/events.sock orders.created '{\"id\": 1}'",
    )
    pub.add_argument("subject", metavar="SUBJECT")
    add_message_argument(pub, "publish")
    pub.add_argument(
        "--wait-subscribers", type=int, default=1, metavar="N", help="subscribers to wait for (default 1)"
    )
    pub.add_argument(
        "--timeout", type=_seconds, default=None, help="seconds to wait for them (default: no limit)"
    )
    pub.add_argument("--linger", type=_seconds, default=5.0, help="seconds subscribers get to catch up")
    pub.add_argument(
        "--policy", choices=POLICIES, default=None, help="for a slow subscriber (default: block)"
    )
    return {"sub": _run(_sub), "pub": _run(_pub)}
