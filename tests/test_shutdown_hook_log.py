"""A failing shutdown hook is logged with its own traceback, not chained to the shutdown's CancelledError."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
    import asyncio, logging, os, signal, aioipc
    logging.basicConfig()
    def broken_hook():
        raise RuntimeError("hook broke")
    async def main():
        async with aioipc.graceful_shutdown(timeout=5) as sd:
            sd.add_hook(broken_hook)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()
        return sd.exit_status
    raise SystemExit(aioipc.run(main(), loop=%r))
"""


def test_failing_hook_logs_no_chained_cancelled_error(tmp_path: Path) -> None:
    for loop in ("asyncio", "uvloop"):
        script = tmp_path / "hook.py"
        script.write_text(textwrap.dedent(SCRIPT % loop))
        proc = subprocess.run(
            [sys.executable, script], capture_output=True, text=True, timeout=30, check=False
        )
        assert proc.returncode == 143, proc.stderr
        assert "shutdown hook broken_hook failed" in proc.stderr
        assert "RuntimeError: hook broke" in proc.stderr
        assert "CancelledError" not in proc.stderr
        assert "During handling" not in proc.stderr
