"""Helpers shared by the test modules: running examples and small programs as a user would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_python(
    *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` from the examples folder, bounded by ``timeout``; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else dict(env),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_example(*args: str, timeout: float = 60) -> list[str]:
    """Run ``examples/SCRIPT ARGS`` (or ``-m MODULE ARGS``) and return its output lines."""
    return run_python(*args, timeout=timeout).stdout.splitlines()


async def run_tool(*argv: str | os.PathLike[str], timeout: float = 30) -> str:
    """Run a program (a C helper the test compiled, say) to completion; it must exit 0; return its output."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with anyio.fail_after(timeout):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()
