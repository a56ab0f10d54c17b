"""The kernel's tables of System V objects (``/proc/sysvipc``), read without ``sysv_ipc``."""

from __future__ import annotations

from typing import Literal

__all__ = ["check_key", "sysvipc_table"]


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
