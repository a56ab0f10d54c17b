"""Anonymous pipes as async byte streams.

Example::

    r, w = aioipc.pipe()
    async with r, w:
        await w.send(b"ping")
        assert await r.receive() == b"ping"

Hand one end to a child process by fd number::

    r, w = aioipc.pipe()
    proc = subprocess.Popen([sys.executable, "child.py", str(w.fileno())], pass_fds=[w.fileno()])
    await w.aclose()                     # the parent keeps only its reading end
    # in child.py:  async with aioipc.pipes.from_fd(int(sys.argv[1]), "w") as w: ...

To a program that expects a blocking fd (``cat``, a C program), hand a
detached end: ``fd = r.detach()`` gives the fd back in blocking mode and
stops owning it; pass it, then ``os.close(fd)``.

Caveats:
    Both ends are non-blocking. ``O_NONBLOCK`` belongs to the open file
    description, so a child that inherits an end shares it: open it there
    with :func:`from_fd` (or make it blocking with ``os.set_blocking``).
"""

from __future__ import annotations

import os
from typing import Literal

from ._core.fdstreams import FdByteStream, FdHandle, FdReceiveStream, FdSendStream, check_fd_kind

__all__ = ["PipeReceiveStream", "PipeSendStream", "PipeStream", "duplex_pair", "from_fd", "pipe"]


class PipeReceiveStream(FdReceiveStream):
    """The reading end of a pipe (a ``ByteReceiveStream``); ``fileno()`` gives its fd."""


class PipeSendStream(FdSendStream):
    """The writing end of a pipe (a ``ByteSendStream``); ``fileno()`` gives its fd.

    A reader that closed gives ``BrokenResourceError`` on ``send()``, never a
    SIGPIPE death.
    """


class PipeStream(FdByteStream):
    """A two-way byte stream over two pipes (see :func:`duplex_pair`)."""


def pipe(*, inheritable: bool = False) -> tuple[PipeReceiveStream, PipeSendStream]:
    """Create a pipe: ``(reading end, writing end)``, both non-blocking.

    Args:
        inheritable: leave the fds inheritable (no ``O_CLOEXEC``). Not needed
            for ``subprocess`` with ``pass_fds``, which makes them inheritable
            in the child only.

    Raises:
        OSError: the process is out of file descriptors (``EMFILE``).
    """
    flags = os.O_NONBLOCK | (0 if inheritable else os.O_CLOEXEC)
    r, w = os.pipe2(flags)
    return PipeReceiveStream(FdHandle(r)), PipeSendStream(FdHandle(w))


def duplex_pair() -> tuple[PipeStream, PipeStream]:
    """Two connected two-way byte streams over a pair of pipes.

    ``send_eof()`` on one closes its writing pipe: the other sees
    ``EndOfStream`` and can still send back.
    """
    r1, w1 = pipe()
    r2, w2 = pipe()
    return PipeStream(r1, w2), PipeStream(r2, w1)


def from_fd(fd: int, mode: Literal["r", "w"]) -> PipeReceiveStream | PipeSendStream:
    """Open an existing fd as a stream that owns it (closes it on ``aclose()``).

    Typical use: a child process opening the pipe end its parent passed it.
    The fd is made non-blocking.

    Args:
        fd: a pipe, FIFO, socket or character device.
        mode: ``"r"`` to receive from it, ``"w"`` to send to it.

    Raises:
        ValueError: ``mode`` is not ``"r"`` or ``"w"``, or the fd is a
            regular file or directory (which an event loop cannot poll).
        OSError: the fd is not open (``EBADF``).
    """
    if mode not in ("r", "w"):
        raise ValueError(f"mode must be 'r' or 'w', not {mode!r}")
    check_fd_kind(fd)
    handle = FdHandle(fd)
    return PipeReceiveStream(handle) if mode == "r" else PipeSendStream(handle)
