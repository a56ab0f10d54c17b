"""Compare aioipc at another revision with the working tree, in one run: did a change cost speed?

Runs the chosen benchmarks' aioipc contenders against aioipc checked out at
``REV`` (a temporary ``git worktree``) and against this tree, alternating
the two ``--rounds`` times so that both see the same machine, then prints
each metric's median per side and the ratio this tree / ``REV`` (msgs/s:
above 1 is faster now; round trips: below 1 is faster now).

Example::

    python benchmarks/compare.py HEAD~5 --bench pipes,sockets --loop asyncio,uvloop --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from collections import defaultdict
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRANSPORTS = {  # the aioipc contenders of each benchmark
    "pipes": "aioipc",
    "sockets": "aioipc-unix,aioipc-tcp",
    "mq": "aioipc,aioipc-sysv",
    "shm": "ring,ring1",
}


def run_once(bench: str, tree: Path, args: argparse.Namespace, samples: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), h.SAMPLES_ENV: str(samples)}
    command = [sys.executable, str(HERE / f"bench_{bench}.py"), "--transport", TRANSPORTS[bench]]
    command += ["--loop", args.loop, "--size", args.size, "--runs", "1"]
    if args.quick:
        command.append("--quick")
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())


def medians(samples: Path) -> dict[tuple[str, str], list[float]]:
    found: dict[tuple[str, str], list[float]] = defaultdict(list)
    if samples.exists():
        for line in samples.read_text().splitlines():
            row = json.loads(line)
            found[(row["contender"], row["workload"])].append(row["median"])
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--bench", default="pipes,sockets", help=f"benchmarks, from {', '.join(TRANSPORTS)}")
    parser.add_argument("--loop", default="asyncio,uvloop")
    parser.add_argument("--size", default="64")
    parser.add_argument("--rounds", type=int, default=5, help="alternations (medians over them)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages per run")
    args = parser.parse_args(argv)
    benches = args.bench.split(",")
    unknown = set(benches) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))}: choose from {', '.join(TRANSPORTS)}")
    with tempfile.TemporaryDirectory(prefix="aioipc-compare-") as tmp:
        old = Path(tmp) / "old"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", str(old), args.rev], check=True)
        try:
            build_accelerator(old)
            sides = {args.rev: (old, Path(tmp) / "old.jsonl"), "this tree": (ROOT, Path(tmp) / "new.jsonl")}
            for round_ in range(args.rounds):
                for bench in benches:
                    for name, (tree, samples) in sides.items():
                        progress = f"round {round_ + 1}/{args.rounds}: {bench}, {name}"
                        print(progress, file=sys.stderr, flush=True)
                        run_once(bench, tree, args, samples)
            before, after = medians(sides[args.rev][1]), medians(sides["this tree"][1])
        finally:
            subprocess.run([*git, "remove", "--force", str(old)], check=False)
    print(f"\n{'contender':<22} {'workload':<18} {args.rev:>12} {'this tree':>12} {'ratio':>7}")
    for key in sorted(set(before) & set(after)):
        was, now = statistics.median(before[key]), statistics.median(after[key])
        print(f"{key[0]:<22} {key[1]:<18} {was:>12.4g} {now:>12.4g} {now / was:>6.2f}x")
    print(f"(medians of {args.rounds} alternating runs; msgs/s and GB/s: higher is better, RTT: lower)")
    return 0


def build_accelerator(tree: Path) -> None:
    """Compile ``tree``'s optional accelerator in place, as this tree's install did, so that both
    sides run the same kind of code (a checkout alone would run in pure Python)."""
    sources = sorted(str(path) for path in (tree / "aioipc" / "_core").glob("*.c"))
    if not sources:
        return
    target = tree / "aioipc" / "_core" / f"_speedups{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    command = ["gcc", "-shared", "-fPIC", "-O2", f"-I{include}", *sources, "-o", str(target)]
    if subprocess.run(command, check=False).returncode != 0:
        print(f"warning: {tree.name}'s accelerator did not build: it runs in pure Python", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
