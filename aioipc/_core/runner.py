"""``aioipc.run()``: asyncio.run with a choice of event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")
LoopName = Literal["auto", "asyncio", "uvloop"]


def loop_factory(loop: LoopName = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory for a new event loop of the named kind.

    Raises:
        ValueError: an unknown name.
        ImportError: ``"uvloop"`` asked for and not installed (``pip install 'aioipc[uvloop]'``).
    """
    if loop not in ("auto", "asyncio", "uvloop"):
        raise ValueError(f"loop must be 'auto', 'asyncio' or 'uvloop', not {loop!r}")
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


def run(main: Coroutine[Any, Any, T], *, loop: LoopName = "auto", debug: bool | None = None) -> T:
    """Run ``main`` to completion on a new event loop and return its result.

    Args:
        loop: ``"auto"`` (uvloop when installed, else asyncio), ``"asyncio"`` or ``"uvloop"``.

    Example::

        aioipc.run(main(), loop="uvloop")
    """
    try:
        factory = loop_factory(loop)
    except BaseException:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory, debug=debug) as runner:
        return runner.run(main)
