"""``aioipc ls`` and ``aioipc rm``: find and remove the kernel objects IPC leaves behind."""

from __future__ import annotations

import argparse
import importlib
import os
import pwd
import stat
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import posix_ipc

from .. import mq, shm, spool, sync
from .._core import leftovers
from .._core.schemes import SCHEMES, parse_address
from ._command import add_command

__all__ = ["add_commands", "list_objects", "remove"]


class Row(NamedTuple):
    kind: str
    name: str
    uid: int
    mode: int
    size: str
    detail: str


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _sysv() -> Any:
    """aioipc.sysv, or None without the ``sysv`` extra."""
    try:
        return importlib.import_module("aioipc.sysv")
    except ImportError:
        return None


def _posix_queues(notes: list[str]) -> list[Row]:
    try:
        queues = mq.list_queues()
    except FileNotFoundError:
        point = mq.MOUNT_POINT
        notes.append(
            f"POSIX queues: only those aioipc created are listed, as {point} is not mounted; "
            f"to list all, as root: mkdir -p {point} && mount -t mqueue none {point}"
        )
        return []
    return [
        Row(
            "posix mq",
            f"mq:{q.name}",
            q.uid,
            q.mode,
            f"{q.current_bytes} B",
            "" if q.current_messages is None else f"{q.current_messages}/{q.max_messages} messages",
        )
        for q in queues
    ]


def _sysv_queues(notes: list[str]) -> list[Row]:
    sysv = _sysv()
    if sysv is None:
        notes.append("System V queues not listed: pip install 'aioipc[sysv]'")
        return []
    return [
        Row(
            "sysv mq",
            f"sysvmq:{q.key & 0xFFFFFFFF:#x}",
            q.uid,
            q.mode,
            f"{q.current_bytes} B",
            f"{q.current_messages} messages, id {q.queue_id}",
        )
        for q in sysv.list_message_queues()
    ]


def _segments(notes: list[str]) -> list[Row]:
    rows = []
    for seg in shm.list_segments():
        if seg.kind == "posix":
            kind, name = ("ring" if seg.ring else "posix shm"), f"shm:{seg.name}"
        else:
            kind, name = "sysv shm", f"sysvshm:{seg.name}"
        detail = "" if seg.attached is None else f"{seg.attached} attached"
        rows.append(Row(kind, name, seg.uid, seg.mode, f"{seg.size} B", detail))
    return rows


def _semaphores(notes: list[str]) -> list[Row]:
    return [
        Row(
            f"{sem.kind} sem",
            f"sem:{sem.name}" if sem.kind == "posix" else f"sysvsem:{sem.name}",
            sem.uid,
            sem.mode,
            "",
            ""
            if sem.count is None
            else (f"value {sem.count}" if sem.kind == "posix" else f"{sem.count} in set"),
        )
        for sem in sync.list_semaphores()
    ]


def _spools(paths: list[str], notes: list[str]) -> list[Row]:
    """The spools named as ``spool:DIR`` (a spool is a directory: found only where named)."""
    rows = []
    for target in paths:
        address = parse_address(target if target.startswith("spool:") else f"spool:{target}")
        try:
            depth = spool.info(address.path)
            st = os.stat(address.path)
        except OSError as exc:
            notes.append(f"{address}: {exc.strerror or exc}")
            continue
        detail = f"{depth.waiting} waiting, {depth.claimed} claimed by {depth.consumers} consumers"
        rows.append(Row("spool", str(address), st.st_uid, st.st_mode & 0o7777, "", detail))
    return rows


def _noted_row(address: str, listed: set[str]) -> Row | None:
    """The row for one object aioipc noted creating (FIFO, socket file, queue), if it still exists."""
    kind, _, name = address.partition(":")
    if kind == "mq":
        if address in listed:
            return None
        try:
            queue = posix_ipc.MessageQueue(name, read=True, write=False)
        except (posix_ipc.Error, OSError, ValueError):
            return None
        try:
            st = os.fstat(queue.mqd)
            return Row(
                "posix mq", address, st.st_uid, st.st_mode & 0o777, "", f"{queue.current_messages} messages"
            )
        finally:
            queue.close()
    try:
        st = os.lstat(name)
    except OSError:
        return None
    if kind == "fifo" and stat.S_ISFIFO(st.st_mode):
        return Row("fifo", address, st.st_uid, st.st_mode & 0o777, "", "")
    if kind == "unix" and stat.S_ISSOCK(st.st_mode):
        return Row("socket", address, st.st_uid, st.st_mode & 0o777, "", "")
    return None


def list_objects() -> tuple[list[Row], list[str]]:
    """Every queue, segment, ring and semaphore visible here, the FIFOs and socket files aioipc
    created (see :mod:`aioipc._core.leftovers`), and notes on what could not be listed."""
    notes: list[str] = []
    rows: list[Row] = []
    for lister in (_posix_queues, _sysv_queues, _segments, _semaphores):
        rows.extend(lister(notes))
    listed = {row.name for row in rows}
    for address in leftovers.noted():
        row = _noted_row(address, listed)
        if row is None:
            leftovers.forget(*address.split(":", 1))  # removed by something other than aioipc
        else:
            rows.append(row)
    return rows, notes


def _sysv_id(kind: str, key_text: str) -> int:
    key = int(key_text, 0)
    for seg in shm.list_segments() if kind == "shm" else []:
        if seg.kind == "sysv" and seg.key is not None and seg.key & 0xFFFFFFFF == key & 0xFFFFFFFF:
            return seg.id or 0
    for sem in sync.list_semaphores() if kind == "sem" else []:
        if sem.kind == "sysv" and sem.key is not None and sem.key & 0xFFFFFFFF == key & 0xFFFFFFFF:
            return sem.id or 0
    raise FileNotFoundError(
        f"no System V {'segment' if kind == 'shm' else 'semaphore set'} with key {key_text}"
    )


def remove(target: str) -> None:
    """Remove one object named as ``aioipc ls`` shows it.

    Raises:
        FileNotFoundError: no such object.
        ValueError: a name ``aioipc rm`` does not know how to remove.
    """
    kind, _, rest = target.partition(":")
    if kind == "sem":
        sync.unlink(rest)
    elif kind in ("sysvshm", "sysvsem"):
        sysv_ipc = importlib.import_module("sysv_ipc")
        ident = _sysv_id(kind[4:], rest)
        (sysv_ipc.remove_shared_memory if kind == "sysvshm" else sysv_ipc.remove_semaphore)(ident)
    else:
        address = parse_address(target)
        scheme = SCHEMES[address.scheme]
        if not scheme.removable:
            raise ValueError(f"aioipc rm cannot remove {target!r}: {scheme.name}: leaves nothing behind")
        scheme.functions().remove_address(address)


def _ls(args: argparse.Namespace) -> int:
    if args.spools:
        notes: list[str] = []
        rows = _spools(args.spools, notes)
    else:
        rows, notes = list_objects()
    if not args.all and not args.spools:
        rows = [row for row in rows if row.uid == os.getuid()]
    print(f"{'KIND':<10} {'OWNER':<10} {'MODE':<5} {'SIZE':>10}  {'NAME':<34} DETAIL")
    for row in sorted(rows):
        print(
            f"{row.kind:<10} {_user(row.uid):<10} {row.mode:04o}  {row.size:>10}  {row.name:<34} {row.detail}"
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 1 if args.spools and notes else 0  # a spool named but not there is an error


def _rm(args: argparse.Namespace) -> int:
    status = 0
    if args.stale:
        for name in shm.remove_stale_rings():
            what = (
                "doorbell FIFO of a ring never created"
                if name.endswith(".bell-c") or name.endswith(".bell-a")
                else "stale ring"
            )
            print(f"removed {what} shm:{name}")
    for target in args.targets:
        try:
            remove(target)
        except (OSError, ValueError) as exc:
            print(f"aioipc: error: {target}: {exc}", file=sys.stderr)
            status = 1
        else:
            print(f"removed {target}")
    return status


def add_commands(commands: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``ls`` and ``rm`` to the CLI's sub-parsers; return their runners by name."""
    ls = add_command(
        commands,
        "ls",
        "list queues, shared memory, rings, semaphores, FIFOs and socket files",
        "List POSIX and System V message queues, shared-memory segments and rings, semaphores, "
        "and the FIFOs and Unix socket files aioipc created (noted in $XDG_RUNTIME_DIR/aioipc, "
        "else /tmp/aioipc-$UID), with owner, mode and size. Only yours unless --all. "
        "With spool:DIR arguments, the depth of those spools instead. "
        "With --dbus, list the names on a bus instead.",
        "aioipc ls",
        "aioipc ls --dbus session",
        address=None,
    )
    ls.add_argument("--all", action="store_true", help="include other users' objects")
    ls.add_argument("spools", nargs="*", metavar="spool:DIR", help="show the depth of these spools")
    ls.add_argument(
        "--dbus",
        nargs="?",
        const="session",
        metavar="BUS",
        help="list the names on a D-Bus bus: session (default), system or an address",
    )
    rm = add_command(
        commands,
        "rm",
        "remove queues, segments, semaphores, FIFOs, socket files",
        "Remove objects named as `aioipc ls` shows them "
        "(mq:/name, sysvmq:KEY, shm:/name, sysvshm:KEY, sem:/name, sysvsem:KEY, "
        "fifo:/path, unix:/path).",
        "aioipc rm mq:/jobs fifo:/tmp/app.fifo --stale",
        address=None,
    )
    rm.add_argument("targets", nargs="*", metavar="NAME")
    rm.add_argument("--stale", action="store_true", help="also remove rings whose processes are all dead")
    return {"ls": _ls, "rm": _rm}
