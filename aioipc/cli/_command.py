"""How every ``aioipc`` sub-command is added: one function for the parser, one for a shared argument."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_command", "add_message_argument"]


def add_command(
    commands: Any, name: str, summary: str, description: str, *examples: str, address: str | None = "ADDR"
) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` to ``commands`` (the parser's sub-parsers) and return its parser.

    ``summary`` stands in the list of commands, ``description`` on the
    command's own help, and each of ``examples`` in its epilog (and, through
    that, in the main help). The first positional argument is the address
    the command works at, shown as ``address``; ``None`` for a command that
    takes none.
    """
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog="\n".join(f"example: {example}" for example in examples) or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if address is not None:
        parser.add_argument("address", metavar=address)
    return parser


def add_message_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    """The optional MESSAGE argument: the text to ``verb``, or ``-`` (the default) for each line of stdin."""
    parser.add_argument(
        "message", metavar="MESSAGE", nargs="?", default="-", help=f"text to {verb}, or - for stdin"
    )
