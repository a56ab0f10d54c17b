"""``aioipc call``: call a JSON-RPC method at an address and print its result as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .. import rpc
from .._core.runner import run
from ._command import add_command

__all__ = ["add_commands"]


def _argument(text: str) -> Any:
    """An argument as JSON when it parses (``1``, ``"x"``, ``[1, 2]``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _call(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"framing": "lines"} if args.lines else {}
    params = [_argument(text) for text in args.params]
    async with await rpc.connect(args.address, **options) as client:
        if args.notify:
            await client.notify(args.method, *params)
            return 0
        result = await client.call(args.method, *params, timeout=args.timeout)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _run_call(args: argparse.Namespace) -> int:
    try:
        return run(_call(args), loop=args.loop)
    except rpc.RemoteError as exc:
        data = "" if exc.data is None else f" (data: {json.dumps(exc.data, ensure_ascii=False)})"
        print(f"aioipc: remote error {exc.code}: {exc.message}{data}", file=sys.stderr)
        return 1


def add_commands(commands: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``call`` to the CLI's sub-parsers; return its runner by name."""
    call = add_command(
        commands,
        "call",
        "call a JSON-RPC method",
        "Call METHOD on the JSON-RPC server at ADDR (any connection address, or "
        "nats://host:port/SUBJECT) and print the result as JSON. Each ARG is parsed as JSON "
        "when it can be (1, true, [1,2], '\"text\"'), else taken as a string. "
        "A remote error is printed with its code; the exit status is then 1.",
        "aioipc call unix:/tmp/math.sock add 1 2",
    )
    call.add_argument("method", metavar="METHOD")
    call.add_argument("params", nargs="*", metavar="ARG")
    call.add_argument("--timeout", type=float, default=30, help="seconds to wait for the result (default 30)")
    call.add_argument("--notify", action="store_true", help="send a notification: no result is awaited")
    call.add_argument(
        "--lines", action="store_true", help="newline-delimited JSON instead of length-prefixed"
    )
    return {"call": _run_call}
