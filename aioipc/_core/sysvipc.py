"""The kernel's tables of System V objects (``/proc/sysvipc``), read without ``sysv_ipc``,
and what ``aioipc ls`` shows of each named object, System V or POSIX."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

__all__ = ["ObjectInfo", "check_key", "list_sysv", "sysvipc_table"]


@dataclass(frozen=True)
class ObjectInfo:
    """What every listed kernel object has: its kind, name, key and id (System V), owner and mode.

    ``name`` is "/name" for POSIX and the key in hex for System V.
    """

    kind: Literal["posix", "sysv"]
    name: str
    key: int | None
    id: int | None
    uid: int
    mode: int


InfoT = TypeVar("InfoT", bound=ObjectInfo)


def sysvipc_table(kind: Literal["msg", "sem", "shm"]) -> list[dict[str, int]]:
    """The rows of ``/proc/sysvipc/<kind>`` in this IPC namespace, each by column name.

    Every column is a number; ``perms`` is printed in octal and the others in
    decimal (``key`` is the signed ``key_t``), so all come back as ints.

    Raises:
        FileNotFoundError: the kernel has no System V IPC.
    """
    with open(f"/proc/sysvipc/{kind}") as table:
        header, *lines = table.read().splitlines()
    names = header.split()
    return [
        {
            name: int(value, 8 if name == "perms" else 10)
            for name, value in zip(names, line.split(), strict=False)
        }
        for line in lines
    ]


def check_key(key: int) -> int:
    """``key`` as the kernel's signed 32-bit ``key_t`` (0xFFFFFFFF and -1 are the same key).

    Raises:
        ValueError: ``key`` is not a 32-bit number, or is 0: ``IPC_PRIVATE``
            names no object, and opening it would create a new one each time.
    """
    if not isinstance(key, int) or not -(2**31) <= key < 2**32 or key == 0:
        raise ValueError(f"bad System V key {key!r}: a non-zero 32-bit number (use ftok() to make one)")
    return key - 2**32 if key >= 2**31 else key


def list_sysv(table: Literal["msg", "sem", "shm"], info: Callable[..., InfoT], *columns: str) -> list[InfoT]:
    """One ``info`` per row of ``/proc/sysvipc/<table>``: the :class:`ObjectInfo` fields, then ``columns``.

    An empty list where the kernel has no System V IPC.
    """
    try:
        rows = sysvipc_table(table)
    except FileNotFoundError:
        return []
    id_column = "msqid" if table == "msg" else f"{table}id"
    return [
        info(
            "sysv",
            f"{row['key'] & 0xFFFFFFFF:#010x}",
            row["key"],
            row[id_column],
            row["uid"],
            row["perms"] & 0o777,
            *(row[column] for column in columns),
        )
        for row in rows
    ]
