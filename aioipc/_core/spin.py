"""The adaptive spin of a message queue's waits: poll a little before parking.

Parking a wait (on the loop's poll, or in a bridge thread) and waking from
it costs several times what the kernel's own wake-up does, while a peer on
another CPU often answers within microseconds. So a queue found empty (full)
is first polled with the non-blocking call on the loop thread for up to
``SPIN`` (50 µs), within the loop's fairness bound. The spin adapts: after
``n`` fruitless spins in a row the next ``2**n - 1`` waits (up to 63) park at
once, so a slow or idle peer costs at most one spin per 64 waits, and an idle
queue, parked, no CPU at all. With one CPU there is no spin.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["SPIN", "SPIN_BACKOFF", "Spin"]

SPIN = 50e-6  # seconds an empty (full) queue is polled before a wait parks
SPIN_BACKOFF = 6  # after n fruitless spins in a row, the next 2**n - 1 waits skip it (n <= 6)
_SPIN_CPUS = (os.cpu_count() or 1) > 1  # with one CPU, a spin would only hold up the peer
T = TypeVar("T")


class Spin:
    """One direction's spin state: ``spin(call)`` before each wait (see the module docstring)."""

    __slots__ = ("misses", "skip")

    def __init__(self) -> None:
        self.misses = 0  # spins in a row that found nothing (up to SPIN_BACKOFF)
        self.skip = 0  # waits that park at once before the next spin

    def __call__(self, call: Callable[[], T | None]) -> T | None:
        """Retry a non-blocking call for up to ``SPIN`` seconds: its first result that is not
        ``None`` or ``False``, or ``None`` if the queue stayed empty (full) all along."""
        if self.skip:
            self.skip -= 1
            return None
        if not _SPIN_CPUS:
            return None
        clock = time.perf_counter
        deadline = clock() + SPIN
        while clock() < deadline:
            result = call()
            if result is not None and result is not False:  # an empty message is a result
                self.misses = 0
                return result
        self.misses = misses = min(self.misses + 1, SPIN_BACKOFF)
        self.skip = (1 << misses) - 1
        return None
