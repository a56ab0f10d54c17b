"""``aioipc.run()``: asyncio.run with a choice of event loop, and an optional quiet exit on signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from types import FrameType
from typing import Any, Literal, TypeVar, cast

from .fdio import FdHandle

__all__ = ["loop_factory", "run"]

T = TypeVar("T")
LoopName = Literal["auto", "asyncio", "uvloop"]

_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LOOP_ENV = "AIOIPC_LOOP"
"""The environment variable that picks the loop ``loop="auto"`` runs on (``asyncio`` or ``uvloop``)."""


def loop_factory(loop: LoopName = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory for a new event loop of the named kind (``"auto"``: see :func:`run`).

    Raises:
        ValueError: an unknown name (in the argument or in ``AIOIPC_LOOP``).
        ImportError: ``"uvloop"`` asked for and not installed (``pip install 'aioipc[uvloop]'``).
    """
    if loop not in ("auto", "asyncio", "uvloop"):
        raise ValueError(f"loop must be 'auto', 'asyncio' or 'uvloop', not {loop!r}")
    if loop == "auto":
        chosen = os.environ.get(LOOP_ENV, "auto")
        if chosen not in ("auto", "asyncio", "uvloop"):
            raise ValueError(f"{LOOP_ENV} must be 'auto', 'asyncio' or 'uvloop', not {chosen!r}")
        loop = cast(LoopName, chosen)
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise ImportError("loop='uvloop' needs uvloop: pip install 'aioipc[uvloop]'") from None
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


def run(
    main: Coroutine[Any, Any, T],
    *,
    loop: LoopName = "auto",
    debug: bool | None = None,
    exit_quietly: bool = False,
) -> T:
    """Run ``main`` to completion on a new event loop and return its result.

    Args:
        loop: ``"auto"`` (uvloop when installed, else asyncio; the environment
            variable ``AIOIPC_LOOP=asyncio`` or ``uvloop`` decides instead when set),
            ``"asyncio"`` or ``"uvloop"``.
        exit_quietly: on SIGINT (Ctrl-C) or SIGTERM (plain ``kill``), cancel
            ``main`` (so its ``finally`` and ``async with`` blocks run and
            remove what it created), then end the process with status
            128+signum and no traceback. For programs and examples; a
            ``graceful_shutdown()`` block inside takes the signals over while it runs.

    Raises:
        SystemExit: with ``exit_quietly``, after a signal stopped ``main``.

    Caveats:
        ``exit_quietly`` installs Python-level handlers for SIGINT and SIGTERM
        for the duration of the call (main thread only) and puts the previous
        ones back afterwards. So that a signal the kernel hands to another
        thread still wakes the loop, it also sets a wake-up fd
        (``signal.set_wakeup_fd``) if the loop has none (asyncio's default
        loop, until something adds a signal handler to it).

    Example::

        aioipc.run(main(), loop="uvloop", exit_quietly=True)
    """
    try:
        factory = loop_factory(loop)
    except BaseException:
        main.close()
        raise
    if not exit_quietly:
        with asyncio.Runner(loop_factory=factory, debug=debug) as runner:
            return runner.run(main)
    return _run_until_signal(main, factory, debug)


def _run_until_signal(
    main: Coroutine[Any, Any, T], factory: Callable[[], asyncio.AbstractEventLoop], debug: bool | None
) -> T:
    received: list[int] = []
    task: asyncio.Task[T] | None = None

    async def wrapper() -> T:
        nonlocal task
        task = asyncio.current_task()
        with _woken_by_signals():
            return await main

    with asyncio.Runner(loop_factory=factory, debug=debug) as runner:
        running = runner.get_loop()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received.append(signum)
            if task is not None and len(received) == 1:
                running.call_soon_threadsafe(task.cancel)
            elif len(received) > 1:  # a second signal: stop waiting for the clean-up
                raise SystemExit(128 + signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in _EXIT_SIGNALS}
        try:
            return runner.run(wrapper())
        except asyncio.CancelledError:
            if not received:
                raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    sys.stdout.flush()
    raise SystemExit(128 + received[0])


@contextlib.contextmanager
def _woken_by_signals() -> Iterator[None]:
    """Make the running loop wake when a signal arrives, whichever thread the kernel hands it to.

    A Python-level handler runs in the main thread, between two bytecodes: with
    the main thread parked in the loop's poll and the signal delivered to another
    thread (a bridge's, an executor's), it ran only at the loop's next event,
    perhaps never. A wake-up fd (``signal.set_wakeup_fd``) the loop watches ends
    the poll. uvloop, and asyncio once it has a signal handler, keep one already:
    theirs stays.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)  # (the main thread)
    if previous != -1:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
        yield
        return
    handle = FdHandle(reader.detach())
    handle.watch_readable(lambda: _drain(handle.fd))
    try:
        yield
    finally:
        current = signal.set_wakeup_fd(-1)
        if current != writer.fileno():  # someone else's since (asyncio's, say): theirs stays
            signal.set_wakeup_fd(current)
        handle.close()
        writer.close()


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass
