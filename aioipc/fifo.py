"""Named pipes (FIFOs) as async streams, with no blocking ``open()`` on the loop.

Example: a log collector fed by short-lived shell writers::

    async with await aioipc.fifo.create("/tmp/app.log.fifo") as fifo:
        async with await aioipc.fifo.open_reader(fifo.path, persistent=True) as r:
            async for chunk in r:        # `echo hi > /tmp/app.log.fifo` from anywhere
                print(chunk)

Caveats:
    Writes of at most ``PIPE_BUF`` (4096) bytes are atomic; larger writes from
    several writers at once may interleave. aioipc keeps each ``send()`` of
    at most 4096 bytes in one ``write()``. Linux only: a ``persistent``
    reader opens the FIFO read-write, which POSIX leaves undefined.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from ._core import leftovers
from ._core.attributes import IPCAttribute
from ._core.errors import IPCError
from ._core.fdstreams import FdHandle, FdReceiveStream, FdSendStream
from ._core.framing import DEFAULT_MAX_SIZE
from ._core.naming import Kind, create_or_open, open_existing
from ._core.schemes import Address, Framing
from ._core.server import Handler, Server
from ._core.streams import ByteStream, FramingName, MessageReceiveStream, as_two_way, framed

__all__ = ["Fifo", "FifoReceiveStream", "FifoSendStream", "create", "open_reader", "open_writer"]

logger = logging.getLogger("aioipc")

_MAX_BACKOFF = 0.05
_DISCARD_CHUNKS = 16  # at most 1 MiB thrown away per bad frame, then the loop gets a turn


def _check_path(path: str) -> str:
    if not path or "\0" in path:
        raise ValueError(f"bad FIFO path {path!r}")
    return path


_KIND = Kind("FIFO", "fifo", _check_path)


class FifoReceiveStream(FdReceiveStream):
    """The reading end of a FIFO (a ``ByteReceiveStream``)."""


class FifoSendStream(FdSendStream):
    """The writing end of a FIFO (a ``ByteSendStream``); a reader that left gives ``BrokenResourceError``."""


def _open_checked(path: str, flags: int) -> int:
    """Open ``path`` without blocking and check it is a FIFO."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise ValueError(f"{path!r} exists but is not a FIFO")
    except BaseException:
        os.close(fd)
        raise
    return fd


class Fifo(anyio.abc.AsyncResource):
    """A FIFO this process created or found; removes it on ``aclose()`` if it created it.

    Use :func:`create` to get one.
    """

    def __init__(self, path: str, *, owned: bool) -> None:
        self.path = path
        self.owned = owned
        # An O_PATH fd keeps our inode alive, so a FIFO made at the same path
        # later cannot reuse its number and be mistaken for ours.
        self._anchor = os.open(path, os.O_PATH | os.O_CLOEXEC) if self.owned else -1
        self._closed = False

    def __repr__(self) -> str:
        return f"<Fifo path={self.path!r} owned={self.owned}>"

    async def open_reader(self, *, persistent: bool = False) -> FifoReceiveStream:
        """Same as the module's :func:`open_reader` on this FIFO."""
        return await open_reader(self.path, persistent=persistent)

    async def open_writer(
        self, *, wait_for_reader: bool = True, timeout: float | None = None
    ) -> FifoSendStream:
        """Same as the module's :func:`open_writer` on this FIFO."""
        return await open_writer(self.path, wait_for_reader=wait_for_reader, timeout=timeout)

    async def aclose(self) -> None:
        """Remove the FIFO if this handle created it and it is still the same file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.owned:
            try:
                mine, now = os.fstat(self._anchor), os.stat(self.path)
                if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                    os.unlink(self.path)
                    leftovers.forget("fifo", self.path)
            except FileNotFoundError:
                pass
            finally:
                os.close(self._anchor)
                self._anchor = -1
        await anyio.lowlevel.checkpoint()

    def __del__(self) -> None:
        if getattr(self, "_anchor", -1) >= 0:
            warnings.warn(
                f"unclosed {self!r}: the FIFO is left in place", ResourceWarning, source=self, stacklevel=1
            )
            os.close(self._anchor)
            self._anchor = -1


async def create(
    path: str | os.PathLike[str], *, exist_ok: bool = False, mode: int = 0o600, persist: bool = False
) -> Fifo:
    """Create a FIFO; the handle removes it on ``aclose()`` unless ``persist=True``.

    The FIFO gets exactly ``mode`` (0600 by default: only this user), never
    anything looser, whatever the umask.

    Args:
        exist_ok: accept an existing FIFO at ``path``; the handle then does
            not remove it (it did not create it).

    Raises:
        FileExistsError: ``path`` exists (or exists and is not a FIFO, even with ``exist_ok``).
        FileNotFoundError: the directory does not exist.
        PermissionError: the directory is not writable.
    """

    def make(path: str) -> str:
        # At most the owner's bits (minus umask), so never briefly looser than asked.
        os.mkfifo(path, mode & 0o700)
        leftovers.note("fifo", path)  # for `aioipc ls`, should a crash leave it
        return path

    def existing(path: str) -> str:
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            raise FileExistsError(errno.EEXIST, f"{path} exists and is not a FIFO")
        return path

    def chmod(path: str) -> None:  # now exactly as asked
        os.chmod(path, mode)

    name = os.fspath(path)
    made, owned = await create_or_open(
        _KIND, name, make, existing, exist_ok=exist_ok, persist=persist, exact_mode=chmod, discard=os.unlink
    )
    return Fifo(made, owned=owned)


async def open_reader(path: str | os.PathLike[str], *, persistent: bool = False) -> FifoReceiveStream:
    """Open a FIFO for reading without blocking the loop.

    A plain reader waits in its first ``receive()`` for a writer, then reads
    until every writer has closed (``EndOfStream``). A ``persistent`` reader
    never sees EOF: it keeps reading as writers come and go (it holds the
    FIFO open read-write, on Linux), until you close it.

    Raises:
        FileNotFoundError: no such path.
        ValueError: the path exists but is not a FIFO.
        PermissionError: no read permission.
    """
    path = os.fspath(path)
    fd = await open_existing(
        _KIND, path, lambda path: _open_checked(path, os.O_RDWR if persistent else os.O_RDONLY)
    )
    return FifoReceiveStream(FdHandle(fd), extra={IPCAttribute.path: path}, wait_first=not persistent)


async def open_writer(
    path: str | os.PathLike[str], *, wait_for_reader: bool = True, timeout: float | None = None
) -> FifoSendStream:
    """Open a FIFO for writing, waiting asynchronously for a reader.

    Never a blocking ``open()``: with no reader, opening fails with ``ENXIO``
    and is retried with a short backoff (at most 50 ms apart), cancellably.

    Args:
        wait_for_reader: ``False`` fails at once when no reader has the FIFO open.
        timeout: seconds to wait for a reader; ``None`` waits for ever.

    Raises:
        TimeoutError: no reader came within ``timeout``.
        OSError: ``ENXIO`` with ``wait_for_reader=False`` and no reader.
        FileNotFoundError, ValueError, PermissionError: as for :func:`open_reader`.
    """
    path = os.fspath(path)
    delay = 0.001
    with anyio.fail_after(timeout):
        while True:
            try:
                with _KIND.map_errors(path, "open"):
                    fd = _open_checked(path, os.O_WRONLY)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                if not wait_for_reader:
                    raise OSError(errno.ENXIO, f"no reader has the FIFO open: {path}") from None
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
    return FifoSendStream(FdHandle(fd), extra={IPCAttribute.path: path}, atomic=True)


def remove_address(address: Address) -> None:
    """``aioipc rm fifo:/path``: remove the FIFO (never anything that is not a FIFO).

    Raises:
        FileNotFoundError: nothing there.
        ValueError: the path is not a FIFO; it was left alone.
    """
    if not stat.S_ISFIFO(os.lstat(address.path).st_mode):
        raise ValueError(f"{address.path} is not a FIFO; left alone")
    os.unlink(address.path)
    leftovers.forget("fifo", address.path)


async def connect_address(
    address: Address, *, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None
) -> ByteStream:
    """``connect("fifo:/path")``: the writing end, waiting up to ``timeout`` for a reader."""
    return as_two_way(await open_writer(address.path, timeout=timeout))


class _ServedFifo(MessageReceiveStream):
    """The messages a FIFO server hands its handler: a bad frame costs only its own writer.

    A frame the framer refuses (over ``max_size``, or a shell's unframed
    ``echo hi``) is logged; what is buffered and what the pipe holds at
    that moment (the rest of that writer's bytes) are discarded, and
    reading goes on with a fresh framer. The persistent reader stays, so
    the next writer's ``open`` never blocks. Writers' boundaries are not
    visible through a persistent reader: garbage shorter than a header
    waits for the next bytes and spoils (at most) the next writer's first
    frame. Shell writers should use ``framing="lines"``.
    """

    def __init__(self, reader: FifoReceiveStream, max_size: int, framing: FramingName, name: str) -> None:
        self._reader = reader
        self._max_size = max_size
        self._framing: FramingName = framing
        self._name = name
        self._messages = framed(reader, max_size, framing=framing)

    async def receive(self) -> bytes:
        while True:
            try:
                return await self._messages.receive()
            except IPCError as exc:
                logger.warning("%s: discarded a bad frame and what followed it: %s", self._name, exc)
                self._discard_pending()
                self._messages = framed(self._reader, self._max_size, framing=self._framing)

    def _discard_pending(self) -> None:
        fd = self._reader.extra(IPCAttribute.fd)
        for _ in range(_DISCARD_CHUNKS):
            try:
                if not os.read(fd, 65536):
                    return
            except OSError:  # BlockingIOError: the pipe is empty
                return

    async def aclose(self) -> None:
        await self._reader.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._reader.extra_attributes


async def serve_address(
    address: Address,
    handler: Handler,
    *,
    framing: Framing,
    max_size: int = DEFAULT_MAX_SIZE,
    mode: int = 0o600,
) -> Server:
    fifo = await create(address.path, mode=mode)
    try:
        reader = await fifo.open_reader(persistent=True)
    except BaseException:
        await fifo.aclose()
        raise
    stream = reader if framing is None else _ServedFifo(reader, max_size, framing, str(address))
    return Server.single(str(address), handler, stream, on_close=fifo.aclose)
