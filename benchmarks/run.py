"""Run every benchmark in this directory (``bench_*.py``), print their tables and ratios, write a report.

What ``make bench`` runs. Takes the shared flags (see ``_harness.py``) and
passes them to each benchmark; ``--quick`` is a smoke test of the numbers
(one run of each measurement, under a minute; the time goes mostly to
starting the two processes of each measurement), the default takes a few
minutes. It says which benchmark runs and how far it got while it runs,
and writes ``benchmarks/report/``: ``ratios.json``, ``ratios.md`` (every
ratio against its target) and ``ratios.png`` (a chart of each ratio
against its target, per loop; needs matplotlib, the ``bench`` extra).
Example::

    python benchmarks/run.py --quick
    python benchmarks/run.py --loop uvloop --runs 7
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import _harness as h

REPORT_DIR = Path(__file__).resolve().parent / "report"


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    lines = ["| ratio | loop | this run | target | verdict |", "|---|---|---|---|---|"]
    for row in rows:
        sign = "≥" if row["op"] == ">=" else "≤"
        verdict = "met" if row["met"] else "**not met**"
        lines.append(
            f"| {row['name']} | {row['loop']} | {row['ratio']:.2f}x | {sign} {row['bound']}x | {verdict} |"
        )
    path.write_text("\n".join(lines) + "\n")


def write_chart(rows: list[dict[str, Any]], path: Path) -> bool:
    """One panel per loop: each ratio over its target (right of 1: met). False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return False
    loops = sorted({row["loop"] for row in rows})
    height = max(3.0, 0.32 * max(sum(r["loop"] == loop for r in rows) for loop in loops) + 1.5)
    fig, axes = plt.subplots(1, len(loops), figsize=(9 * len(loops), height), squeeze=False)
    for ax, loop in zip(axes[0], loops, strict=True):
        mine = [r for r in rows if r["loop"] == loop and r["bound"] > 0]  # bound 0: for information
        # how far from the target, as a factor: above 1 is met whichever way the bound points
        scores = [r["ratio"] / r["bound"] if r["op"] == ">=" else r["bound"] / r["ratio"] for r in mine]
        colors = ["tab:green" if r["met"] else "tab:red" for r in mine]
        labels = [
            f"{r['name']}  ({r['ratio']:.2f}x vs {'≥' if r['op'] == '>=' else '≤'} {r['bound']}x)"
            for r in mine
        ]
        ax.barh(range(len(mine)), scores, color=colors)
        ax.set_yticks(range(len(mine)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the log axis labels its decades only
        ax.set_xlabel("ratio / target (right of the line: met)")
        ax.set_title(f"aioipc benchmark ratios, loop: {loop}")
    fig.tight_layout()  # room for the long target names on the left
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(rows: list[dict[str, Any]]) -> None:
    REPORT_DIR.mkdir(exist_ok=True)
    (REPORT_DIR / "ratios.json").write_text(json.dumps(rows, indent=1) + "\n")
    write_markdown(rows, REPORT_DIR / "ratios.md")
    charted = write_chart(rows, REPORT_DIR / "ratios.png")
    note = "" if charted else " (no PNG: pip install 'aioipc[bench]' for matplotlib)"
    print(f"report: {REPORT_DIR.name}/ratios.md, ratios.json{', ratios.png' if charted else ''}{note}")


def main(argv: list[str]) -> int:
    h.make_parser(__doc__.splitlines()[0]).parse_args(argv)  # --help, and bad flags fail here
    started = time.monotonic()
    unmet = []
    paths = sorted(Path(__file__).resolve().parent.glob("bench_*.py"))
    for number, path in enumerate(paths, 1):
        print(
            f"[{number}/{len(paths)}] {path.stem} ({time.monotonic() - started:.0f} s so far)",
            file=sys.stderr,
        )
        module = importlib.import_module(path.stem)
        if not module.main(argv):
            unmet.append(path.stem)
    elapsed = time.monotonic() - started
    summary = f"not every target met: {', '.join(unmet)}" if unmet else "every measured target met"
    print(f"\n{summary} ({elapsed:.0f} s)")
    write_report(h.RECORDED)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
