"""Every ```python block of README.md runs as written, as a script in a fresh directory.

A block runs as ``python snippet.py`` in a temporary directory (relative
paths such as ``app.sock`` land there), with this interpreter first on
``PATH`` (so ``python`` and ``aioipc`` are this installation's). It must
exit 0 without a traceback, within a minute.

A block that needs more than that says so in an HTML comment on the line
before it, read as a shell command run instead (``snippet.py`` is the
block), for example a peer, a bus or an expected exit status::

    <!-- readme-test: dbus-run-session -- python snippet.py -->
    <!-- readme-test: python snippet.py; test $? = 143 -->

A block whose command needs a program this machine lacks is skipped, naming it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<command>.*?) -->\n)?```python\n(?P<code>.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[int, str, str]]:
    """``(line, command, code)`` for each python block of the README."""
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start("code")), match["command"] or "python snippet.py", match["code"])
        for match in _BLOCK.finditer(text)
    ]


BLOCKS = readme_blocks()


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("line", "command", "code"), BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs_as_written(line: int, command: str, code: str, tmp_path: Path) -> None:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    program = shlex.split(command)[0]
    if shutil.which(program, path=path) is None:
        pytest.skip(f"README.md:{line} needs {program}, not installed here")
    (tmp_path / "snippet.py").write_text(code)
    proc = subprocess.run(
        ["sh", "-c", command],
        cwd=tmp_path,
        env={**os.environ, "PATH": path},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (
        f"README.md:{line}: `{command}` exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr, f"README.md:{line}\n{proc.stderr}"
