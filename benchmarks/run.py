"""Run every benchmark in this directory (``bench_*.py``) and print their tables and ratios.

What ``make bench`` runs. Takes the shared flags (see ``_harness.py``) and
passes them to each benchmark; ``--quick`` is a smoke test of the numbers
(one run of each measurement, under a minute; the time goes mostly to
starting the two processes of each measurement), the default takes a few
minutes. Example::

    python benchmarks/run.py --quick
    python benchmarks/run.py --loop uvloop --runs 7
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import _harness as h


def main(argv: list[str]) -> int:
    h.make_parser(__doc__.splitlines()[0]).parse_args(argv)  # --help, and bad flags fail here
    started = time.monotonic()
    unmet = []
    for path in sorted(Path(__file__).resolve().parent.glob("bench_*.py")):
        module = importlib.import_module(path.stem)
        if not module.main(argv):
            unmet.append(path.stem)
    elapsed = time.monotonic() - started
    summary = f"not every target met: {', '.join(unmet)}" if unmet else "every measured target met"
    print(f"\n{summary} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
