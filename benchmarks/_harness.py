"""Shared harness for the side-by-side benchmarks in this directory.

Every measurement runs between two real processes, both started with
``subprocess`` by the harness: a *measuring* side (it keeps the clock and
prints one JSON line) and its *peer*. The kernel objects they talk over
(pipes, sockets, ...) are made by the harness process and handed to both
sides by fd number (``pass_fds``); each side pins itself to its own CPU
when the machine has two. A measurement is repeated ``--runs`` times, the
runs of all contenders interleaved so that drift hits them alike, and the
table shows each median with the best run in parentheses, then the ratios
between contenders measured in this same run.

Flag vocabulary (every ``bench_*.py`` accepts it)::

    --transport T[,T...]  contenders to run (default: every one available)
    --loop L[,L...]       event loops for the async contenders: asyncio, uvloop
    --size N[,N...]       message sizes in bytes (suffixes k, Ki, M, Mi)
    --count N             messages per measurement (default per workload)
    --runs N              repetitions; the median is reported
    --quick               a tenth of the messages, one run (a smoke test of the numbers)

Adding a mechanism (``benchmarks/bench_<mechanism>.py``):

1. Write the roles, one function per role and transport, taking a
   :class:`RoleArgs` and returning a dict: the ``recv`` side of a
   throughput workload returns :func:`throughput_result` (time it with a
   :class:`Stopwatch`, which also writes the go byte right after starting
   the clock; the sender waits for it with :func:`wait_go`), the ``ping``
   side of a latency workload returns :func:`latency_result` (time it with
   :class:`RoundTrips`); ``send`` and ``echo`` return ``{}``. For message
   objects with ``send`` / ``receive`` coroutines the whole loop is here:
   :func:`send_messages`, :func:`receive_messages`, :func:`ping_messages`,
   :func:`echo_messages`. List the roles in ``ROLES`` with :func:`roles`
   (coroutine functions run on the loop ``--loop`` names).
2. Write ``measure(contender, workload, cpus) -> dict``: create the kernel
   objects, call :func:`run_sides` with each side's role and fds (Python
   roles of this script, or a C binary from :func:`build_c` taking the
   same arguments), remove any named object it created, return the
   measuring side's dict. ``run_sides`` closes the fds once both sides
   have started.
3. ``main(argv) -> bool``: parse with :func:`parse_args`, pick contenders
   (:func:`pick_contenders`) and workloads (:func:`make_workloads`), then
   :func:`report` measures, prints the table and the ratios your issue
   names (:func:`targets`), and returns True when all are met. End the
   script with ``if __name__ == "__main__": h.script_main(ROLES, main)``.

``run.py`` imports every ``bench_*.py`` and calls its ``main(argv)``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Container,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / ".build"
ROLE_FLAG = "--role"
LOOPS = ("asyncio", "uvloop")
PAIR_TIMEOUT = 300.0
BULK_SIZE = 64 * 1024  # from this size, throughput is reported in GB/s

Kind = Literal["throughput", "latency"]
Op = Literal[">=", "<="]


# ---------------------------------------------------------------- flags


def parse_size(text: str) -> int:
    """``"64"``, ``"64k"``, ``"1Mi"``, ``"1MiB"`` → bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)(i?)B?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    number, unit, binary = match.groups()
    scale = {"": 1, "k": 1000, "m": 1000**2}[unit.lower()]
    if binary:
        scale = {"": 1, "k": 1024, "m": 1024**2}[unit.lower()]
    return int(number) * scale


def format_size(size: int) -> str:
    for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def make_parser(description: str) -> argparse.ArgumentParser:
    """The shared flag vocabulary (see the module docstring)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--transport", type=_csv, default=None, help="contenders, comma-separated")
    parser.add_argument("--loop", type=_csv, default=list(LOOPS), help="asyncio, uvloop (comma-separated)")
    parser.add_argument(
        "--size", type=lambda s: [parse_size(x) for x in _csv(s)], default=None, help="message sizes"
    )
    parser.add_argument("--count", type=int, default=None, help="messages per measurement")
    parser.add_argument("--runs", type=int, default=None, help="repetitions (median reported)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages, one run")
    return parser


QUICK_DIVISOR = 10  # --quick divides every default message count by this ...
QUICK_MIN_COUNT = 30  # ... down to this many at the least


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the shared flags; ``runs`` gets its default (1 with ``--quick``, else 5)."""
    args = make_parser(description).parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    return args


def default_count(full: int, quick: bool) -> int:
    """A workload's default message count, divided down for ``--quick``."""
    return max(QUICK_MIN_COUNT, full // QUICK_DIVISOR) if quick else full


# ---------------------------------------------------------------- model


@dataclass(frozen=True)
class Contender:
    """One side-by-side contender: a transport, on an event loop when it is async."""

    transport: str
    label: str
    loop: str | None = None

    @property
    def key(self) -> str:
        return f"{self.transport}@{self.loop}" if self.loop else self.transport


@dataclass(frozen=True)
class Workload:
    """What one measurement does: ``count`` messages of ``size`` bytes, one way or round trips."""

    kind: Kind
    size: int
    count: int = field(default=0, compare=False)  # workloads match on (kind, size)

    @property
    def metrics(self) -> tuple[str, ...]:
        if self.kind == "latency":
            return ("p50_us", "p99_us")
        return ("gb_per_s",) if self.size >= BULK_SIZE else ("msgs_per_s",)

    def heading(self, metric: str) -> str:
        name = {"p50_us": "RTT p50 µs", "p99_us": "RTT p99 µs", "gb_per_s": "GB/s", "msgs_per_s": "msgs/s"}
        return f"{format_size(self.size)} {name[metric]}"


LOWER_IS_BETTER = {"p50_us", "p99_us"}


def make_workloads(
    args: argparse.Namespace,
    default_sizes: Sequence[int],
    throughput_count: Callable[[int], int],
    *,
    latency_count: int = 10_000,
    latency_sizes: Container[int] | None = None,
    ordered: bool = True,
) -> list[Workload]:
    """For each ``--size``: a throughput workload (``throughput_count(size)`` messages by default),
    and a latency one (``latency_count`` round trips) for the ``latency_sizes`` (default: all);
    ``--count`` overrides both. ``ordered``: by size, round trips first."""
    workloads = []
    for size in args.size or default_sizes:
        count = default_count(throughput_count(size), args.quick)
        workloads.append(Workload("throughput", size, args.count or count))
        if latency_sizes is None or size in latency_sizes:
            workloads.append(
                Workload("latency", size, args.count or default_count(latency_count, args.quick))
            )
    return sorted(workloads, key=lambda w: (w.size, w.kind)) if ordered else workloads


def stream_count(small_messages: int) -> Callable[[int], int]:
    """Throughput counts for a byte stream: ``small_messages`` of 64 B, as many bytes of larger
    messages (at least 50), 300 from :data:`BULK_SIZE` on; long enough that process start-up and the
    first chunks do not weigh."""
    return lambda size: max(50, small_messages * 64 // max(size, 64)) if size < BULK_SIZE else 300


def pick_contenders(
    args: argparse.Namespace,
    labels: dict[str, str],
    *,
    available: Sequence[str] | None = None,
    asynchronous: Container[str] | None = None,
    missing: str = "gcc missing?",
) -> list[Contender]:
    """The contenders for ``--transport`` (default: every ``available`` one, all of ``labels``
    when not given): one per ``--loop`` for the ``asynchronous`` transports (default: all), one for
    each other.

    Raises:
        SystemExit: a transport that ``labels`` does not name.
    """
    available = list(labels) if available is None else available
    chosen = args.transport or available
    unknown = set(chosen) - set(labels)
    if unknown:
        raise SystemExit(f"unknown transport(s) {sorted(unknown)}; choose from {sorted(labels)}")
    result = []
    for transport in chosen:
        if transport not in available:
            print(f"skipping {transport}: not available ({missing})", file=sys.stderr)
        elif asynchronous is None or transport in asynchronous:
            result += [Contender(transport, labels[transport], loop) for loop in args.loop]
        else:
            result.append(Contender(transport, labels[transport]))
    return result


@dataclass
class Results:
    """Samples per (contender, workload, metric), over runs."""

    samples: dict[tuple[str, Workload, str], list[float]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-minute load average at the start of each run
    timed_out: list[str] = field(default_factory=list)  # measurements left out: what hung

    def add(self, contender: Contender, workload: Workload, result: dict[str, float]) -> None:
        values = derive_metrics(workload, result)
        for metric in workload.metrics:
            self.samples.setdefault((contender.key, workload, metric), []).append(values[metric])

    def median(self, contender: Contender, workload: Workload, metric: str) -> float | None:
        values = self.samples.get((contender.key, workload, metric))
        return statistics.median(values) if values else None

    def best(self, contender: Contender, workload: Workload, metric: str) -> float | None:
        values = self.samples.get((contender.key, workload, metric))
        if not values:
            return None
        return min(values) if metric in LOWER_IS_BETTER else max(values)


def derive_metrics(workload: Workload, result: dict[str, float]) -> dict[str, float]:
    if workload.kind == "latency":
        return {"p50_us": result["latencies_p50"] * 1e6, "p99_us": result["latencies_p99"] * 1e6}
    elapsed = result["elapsed"]
    return {
        "msgs_per_s": result["count"] / elapsed,
        "gb_per_s": result["count"] * result["size"] / elapsed / 1e9,
    }


# ---------------------------------------------------------------- processes


class MeasurementTimeout(RuntimeError):
    """A measurement that did not end in time: both sides were killed."""


def pick_cpus() -> tuple[int, int]:
    """Two CPUs for the two sides, or ``(-1, -1)`` (unpinned) on a one-CPU machine."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (-1, -1)


def run_pair(
    measure_argv: Sequence[str],
    peer_argv: Sequence[str],
    *,
    measure_fds: Sequence[int],
    peer_fds: Sequence[int],
    timeout: float = PAIR_TIMEOUT,
) -> dict[str, float]:
    """Start the peer and the measuring side, wait for both, return the measuring side's JSON line.

    Each side gets only its own fds; all of them are closed here once both
    sides have started, so that a side sees EOF when the other exits.

    Raises:
        RuntimeError: a side failed or timed out (both are killed), with its stderr.
    """
    peer = subprocess.Popen(peer_argv, pass_fds=peer_fds, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        measure = subprocess.Popen(
            measure_argv, pass_fds=measure_fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except BaseException:
        peer.kill()
        peer.communicate()
        raise
    # The sides must see EOF when the other exits: drop our copies at once.
    for fd in {*measure_fds, *peer_fds}:
        os.close(fd)
    deadline = time.monotonic() + timeout
    try:
        out, measure_err = measure.communicate(timeout=timeout)
        _, peer_err = peer.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        measure.kill()
        peer.kill()
        measure.communicate()
        peer.communicate()
        raise MeasurementTimeout(f"timed out after {timeout:.0f} s: {' '.join(measure_argv)}") from None
    for proc, argv, err in ((measure, measure_argv, measure_err), (peer, peer_argv, peer_err)):
        if proc.returncode != 0:
            command = " ".join(argv)
            raise RuntimeError(f"{command} exited with {proc.returncode}:\n{err.decode(errors='replace')}")
    return _result(out)


def _result(out: bytes) -> dict[str, float]:
    result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def run_sides(
    script: str,
    contender: Contender,
    workload: Workload,
    cpus: tuple[int, int],
    measure: tuple[str, Sequence[int]],
    peer: tuple[str, Sequence[int]],
    *,
    binary: str | Path | None = None,
) -> dict[str, float]:
    """:func:`run_pair` with the measuring side ``(role, fds)`` on ``cpus[0]`` and the peer on ``cpus[1]``.

    Both sides are roles of ``script`` (:func:`role_command`), or with ``binary`` that program
    with the arguments ``ROLE FD... SIZE COUNT CPU``.
    """
    argvs = []
    for (role, fds), cpu in zip((measure, peer), cpus, strict=True):
        if binary is None:
            argvs.append(role_command(script, role, contender, workload, fds, cpu))
        else:
            numbers = (workload.size, workload.count, cpu)
            argvs.append([str(binary), role, *map(str, fds), *map(str, numbers)])
    return run_pair(argvs[0], argvs[1], measure_fds=measure[1], peer_fds=peer[1])


def run_alone(argv: Sequence[str], env: dict[str, str]) -> dict[str, float]:
    """Run a measuring side that starts its own peer; return its JSON line.

    Raises:
        RuntimeError: it failed, with its stderr.
    """
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=PAIR_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr.decode()}")
    return _result(proc.stdout)


def build_c(name: str) -> Path | None:
    """Compile ``c/<name>.c`` with ``gcc -O2`` into ``.build/`` (once); ``None`` when gcc is missing.

    Raises:
        subprocess.CalledProcessError: the source did not compile.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    source = HERE / "c" / f"{name}.c"
    binary = BUILD_DIR / name
    newest = max(source.stat().st_mtime, (HERE / "c" / "bench.h").stat().st_mtime)
    if not binary.exists() or binary.stat().st_mtime < newest:
        BUILD_DIR.mkdir(exist_ok=True)
        subprocess.run([gcc, "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def role_command(
    script: str, role: str, contender: Contender, workload: Workload, fds: Sequence[int], cpu: int
) -> list[str]:
    """The command that runs one side of a measurement from a Python bench script."""
    return [
        sys.executable,
        script,
        ROLE_FLAG,
        role,
        "--transport",
        contender.transport,
        "--loop",
        contender.loop or "asyncio",
        "--size",
        str(workload.size),
        "--count",
        str(workload.count),
        "--fds",
        ",".join(map(str, fds)),
        "--cpu",
        str(cpu),
    ]


# ---------------------------------------------------------------- role side


@dataclass(frozen=True)
class RoleArgs:
    """What a role function gets: its fds (in the order the measure function gave them) and the workload."""

    fds: tuple[int, ...]
    size: int
    count: int
    loop: str


Role = Callable[[RoleArgs], dict[str, float]]


def role_main(roles: dict[tuple[str, str], Role]) -> None:
    """Run one side of a measurement (``ROLES[(role, transport)]``), print its result, exit."""
    parser = argparse.ArgumentParser()
    parser.add_argument(ROLE_FLAG, required=True)
    parser.add_argument("--transport", required=True)
    parser.add_argument("--loop", default="asyncio")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--fds", type=lambda s: tuple(int(x) for x in s.split(",")), required=True)
    parser.add_argument("--cpu", type=int, default=-1)
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    function = roles[(args.role, args.transport)]
    result = function(RoleArgs(fds=args.fds, size=args.size, count=args.count, loop=args.loop))
    print(json.dumps(result), flush=True)
    sys.exit(0)


def script_main(roles: dict[tuple[str, str], Role], main: Callable[[], object]) -> None:
    """What a bench script does when run: one side of a measurement (``--role``), or ``main()``."""
    if ROLE_FLAG in sys.argv:
        role_main(roles)
    main()


def run_async(main: Coroutine[Any, Any, Any], loop: str) -> Any:
    """Run a coroutine on the named event loop."""
    import aioipc

    return aioipc.run(main, loop="uvloop" if loop == "uvloop" else "asyncio")


def async_role(function: Callable[[RoleArgs], Coroutine[Any, Any, dict[str, float]]]) -> Role:
    """A role that runs ``function(args)`` on the event loop ``--loop`` names."""

    def role(a: RoleArgs) -> dict[str, float]:
        result: dict[str, float] = run_async(function(a), a.loop)
        return result

    return role


def roles(transport: str, **functions: Callable[[RoleArgs], Any]) -> dict[tuple[str, str], Role]:
    """Entries of a script's ``ROLES`` for one transport: ``roles("os", send=os_send, recv=os_recv)``.
    Coroutine functions run on the loop (:func:`async_role`)."""
    return {
        (role, transport): async_role(function) if inspect.iscoroutinefunction(function) else function
        for role, function in functions.items()
    }


def wait_go(fd: int) -> None:
    """Block until the measuring side says go (one byte on ``fd``)."""
    if os.read(fd, 1) != b"g":
        raise RuntimeError("the measuring side went away before saying go")


def signal_go(fd: int) -> None:
    """Tell the peer to start (call right after starting the clock)."""
    os.write(fd, b"g")


def throughput_result(elapsed: float, count: int, size: int) -> dict[str, float]:
    return {"elapsed": elapsed, "count": count, "size": size}


def latency_result(latencies: list[float]) -> dict[str, float]:
    """p50 and p99 of round-trip times in seconds (nearest rank below, as the C floor does)."""
    ordered = sorted(latencies)
    last = len(ordered) - 1
    return {"latencies_p50": ordered[last // 2], "latencies_p99": ordered[int(last * 0.99)]}


def warmup_rounds(count: int) -> int:
    """Round trips done before measuring (the same rule in the C floor)."""
    return count // 10 + 10


class Stopwatch:
    """Times a throughput receiver: ``with Stopwatch(go_fd) as watch:`` starts the clock, then writes
    the go byte (no go byte when ``go_fd`` is None); ``watch.result(count, size)`` afterwards."""

    def __init__(self, go_fd: int | None) -> None:
        self._go_fd = go_fd
        self._start = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        if self._go_fd is not None:
            signal_go(self._go_fd)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self._start

    def result(self, count: int, size: int) -> dict[str, float]:
        return throughput_result(self.elapsed, count, size)


class RoundTrips:
    """Times round trips: ``for _ in rounds:`` do one round trip per step; the first
    :func:`warmup_rounds` steps are not kept. ``rounds.result()`` afterwards."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.latencies: list[float] = []

    def __iter__(self) -> Iterator[None]:
        clock = time.perf_counter
        latencies = self.latencies
        for _ in range(warmup_rounds(self.count)):
            yield
        for _ in range(self.count):
            start = clock()
            yield
            latencies.append(clock() - start)

    def result(self) -> dict[str, float]:
        return latency_result(self.latencies)


# Loops over objects with ``send(bytes)`` / ``receive() -> bytes`` coroutines.

Send = Callable[[bytes], Awaitable[object]]
Receive = Callable[[], Awaitable[bytes]]


async def send_messages(send: Send, a: RoleArgs, go_fd: int) -> dict[str, float]:
    """The ``send`` role: wait for go, then ``a.count`` messages of ``a.size`` bytes."""
    payload = b"x" * a.size
    wait_go(go_fd)
    for _ in range(a.count):
        await send(payload)
    return {}


async def receive_messages(receive: Receive, a: RoleArgs, go_fd: int) -> dict[str, float]:
    """The ``recv`` role: start the clock, say go, receive ``a.count`` messages."""
    with Stopwatch(go_fd) as watch:
        for _ in range(a.count):
            message = await receive()
    assert len(message) == a.size
    return watch.result(a.count, a.size)


async def ping_messages(send: Send, receive: Receive, a: RoleArgs) -> dict[str, float]:
    """The ``ping`` role: time round trips of ``a.size`` bytes."""
    payload = b"x" * a.size
    rounds = RoundTrips(a.count)
    for _ in rounds:
        await send(payload)
        await receive()
    return rounds.result()


async def echo_messages(messages: AsyncIterable[bytes], send: Send) -> dict[str, float]:
    """The ``echo`` role: send every message back."""
    async for message in messages:
        await send(message)
    return {}


# ---------------------------------------------------------------- driving and printing


def collect(
    measure: Callable[[Contender, Workload, tuple[int, int]], dict[str, float]],
    contenders: Sequence[Contender],
    workloads: Sequence[Workload],
    runs: int,
    *,
    applies: Callable[[Contender, Workload], bool] = lambda contender, workload: True,
    progress: bool = True,
) -> Results:
    """Run every (contender, workload) that ``applies`` ``runs`` times, interleaved; gather the samples."""
    results = Results()
    cpus = pick_cpus()
    pairs = [(c, w) for w in workloads for c in contenders if applies(c, w)]
    total = runs * len(pairs)
    done = 0
    for _ in range(runs):
        results.load.append(os.getloadavg()[0])
        for contender, workload in pairs:
            try:
                results.add(contender, workload, measure(contender, workload, cpus))
            except MeasurementTimeout as exc:  # one hung side costs its sample, not the whole run
                results.timed_out.append(str(exc))
                print(f"\nwarning: {exc}; left out", file=sys.stderr, flush=True)
            done += 1
            if progress:
                print(f"\r  {done}/{total} measurements", end="", file=sys.stderr, flush=True)
    if progress:
        print("\r" + " " * 40 + "\r", end="", file=sys.stderr, flush=True)
    return results


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "msgs_per_s":
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.0f} k"
    if metric == "gb_per_s":
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def print_table(
    title: str, results: Results, contenders: Sequence[Contender], workloads: Sequence[Workload], runs: int
) -> None:
    """Medians (best run in parentheses) for every contender and workload."""
    cpus = pick_cpus()
    where = f"pinned to CPUs {cpus[0]} and {cpus[1]}" if cpus[0] >= 0 else "unpinned (one CPU)"
    runs_text = f"median of {runs} runs (best)" if runs > 1 else "one run (--runs N for medians)"
    print(f"\n{title}: two processes {where}; {runs_text}")
    if results.load:
        low, high = min(results.load), max(results.load)
        busy = (
            " (other processes compete for the CPUs: expect noise)"
            if high > 0.5 * (os.cpu_count() or 1)
            else ""
        )
        print(f"load average during the runs: {low:.1f} to {high:.1f}{busy}")
    for what in results.timed_out:
        print(f"left out, {what}")
    print()
    columns = [(w, m) for w in workloads for m in w.metrics]
    header = ["transport", "loop", *(w.heading(m) for w, m in columns)]
    rows = [header]
    for contender in contenders:
        row = [contender.label, contender.loop or "-"]
        for workload, metric in columns:
            median = results.median(contender, workload, metric)
            best = results.best(contender, workload, metric)
            row.append(
                "-" if median is None else f"{format_value(metric, median)} ({format_value(metric, best)})"
            )
        rows.append(row)
    _print_rows(rows, left={0, 1})


def _print_rows(rows: Iterable[Sequence[str]], left: set[int]) -> None:
    rows = [list(row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i in left else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def report(
    title: str,
    measure: Callable[[Contender, Workload, tuple[int, int]], dict[str, float]],
    contenders: Sequence[Contender],
    workloads: Sequence[Workload],
    runs: int,
    wanted: Sequence[Target],
    *,
    applies: Callable[[Contender, Workload], bool] = lambda contender, workload: True,
) -> bool:
    """Measure (:func:`collect`), print the table and the ratios; True when every target is met."""
    results = collect(measure, contenders, workloads, runs, applies=applies)
    print_table(title, results, contenders, workloads, runs)
    if os.environ.get(SAMPLES_ENV):
        save_medians(os.environ[SAMPLES_ENV], results)
    return print_targets(results, wanted)


SAMPLES_ENV = "AIOIPC_BENCH_SAMPLES"
"""A file to which :func:`report` appends every median as a JSON line (``compare.py`` reads it)."""


def save_medians(path: str, results: Results) -> None:
    with open(path, "a") as out:
        for (key, workload, metric), values in results.samples.items():
            heading = workload.heading(metric)
            row = {"contender": key, "workload": heading, "median": statistics.median(values)}
            out.write(json.dumps(row) + "\n")


@dataclass(frozen=True)
class Target:
    """A ratio ``numerator / denominator`` of one metric, and the bound it must meet."""

    name: str
    numerator: Contender
    denominator: Contender
    workload: Workload
    metric: str
    op: Op
    bound: float


TargetSpec = tuple[str, str, str, Workload, str, Op, float]  # name, numerator key, denominator key, ...


def targets(contenders: Sequence[Contender], wanted: Iterable[TargetSpec]) -> list[Target]:
    """The wanted targets (contenders named by key) whose two contenders are both measured."""
    by_key = {c.key: c for c in contenders}
    return [
        Target(name, by_key[top], by_key[bottom], workload, metric, op, bound)
        for name, top, bottom, workload, metric, op, bound in wanted
        if top in by_key and bottom in by_key
    ]


RECORDED: list[dict[str, Any]] = []
"""Every ratio printed in this process, for ``run.py``'s report (JSON, Markdown, PNG)."""


def print_targets(results: Results, targets: Sequence[Target]) -> bool:
    """Print each ratio with met / not met; True when every measured target is met."""
    rows = [["ratio (this run)", "medians", "best runs", "target", ""]]
    all_met = True
    for target in targets:
        top = results.median(target.numerator, target.workload, target.metric)
        bottom = results.median(target.denominator, target.workload, target.metric)
        top_best = results.best(target.numerator, target.workload, target.metric)
        bottom_best = results.best(target.denominator, target.workload, target.metric)
        if top is None or bottom is None or top_best is None or bottom_best is None:
            continue
        ratio = top / bottom
        met = ratio >= target.bound if target.op == ">=" else ratio <= target.bound
        all_met &= met
        RECORDED.append(
            {
                "name": target.name,
                "loop": target.numerator.loop or target.denominator.loop or "-",
                "ratio": ratio,
                "op": target.op,
                "bound": target.bound,
                "met": met,
                "load": max(results.load, default=0.0),
            }
        )
        sign = "≥" if target.op == ">=" else "≤"
        rows.append(
            [
                target.name,
                f"{ratio:.2f}x",
                f"{top_best / bottom_best:.2f}x",
                f"{sign} {target.bound}x",
                "met" if met else "NOT MET",
            ]
        )
    if len(rows) > 1:
        print()
        _print_rows(rows, left={0, 4})
        print("(met / not met is judged on the medians)")
    return all_met
