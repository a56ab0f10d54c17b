"""``aioipc.run()``: asyncio.run with a choice of event loop, and an optional quiet exit on signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, Literal, TypeVar, cast

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
        ones back afterwards.

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
