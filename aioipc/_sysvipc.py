"""The kernel's tables of System V objects (``/proc/sysvipc``), read without ``sysv_ipc``."""

from __future__ import annotations

from typing import Literal

__all__ = ["sysvipc_table"]


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
