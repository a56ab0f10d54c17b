"""What mapped files and POSIX and System V shared-memory handles share: ``.buf`` and its close.

Rule 1: ``aclose()`` never unmaps memory that a live ``memoryview`` still
points at (a read through it would crash the process): while a view made
from ``.buf`` lives, ``aclose()`` raises ``BufferError`` and the handle stays
open, with a fresh ``.buf``.
Rule 2: what the handle created (file, segment) is removed by its first
close that unmapped, and only if the handle owns it.
"""

from __future__ import annotations

import anyio.abc
import anyio.lowlevel

__all__ = ["MemoryHandle"]


class MemoryHandle(anyio.abc.AsyncResource):
    """The base of handles of mapped memory; ``.buf`` is a writable ``memoryview`` of it.

    A subclass sets ``owned``, ``_closed = False`` and ``buf = self._view()``,
    and says how to view, unmap and remove its memory.
    """

    buf: memoryview
    owned: bool
    _closed: bool

    def _view(self) -> memoryview:
        """A new view of the whole memory."""
        raise NotImplementedError

    def _unmap(self) -> None:
        """Unmap the memory, or raise ``BufferError`` (unmapping nothing) while a view of it lives."""
        raise NotImplementedError

    def _remove(self) -> None:
        """Remove what holds the memory (this handle created it); one already gone is no error."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Unmap (idempotent); remove the memory if this handle created it.

        Raises:
            BufferError: a memoryview made from ``.buf`` is still alive.
        """
        if self._closed:
            return
        self.buf.release()
        try:
            self._unmap()
        except BufferError:
            self.buf = self._view()
            raise BufferError("release the memoryviews made from .buf before aclose()") from None
        self._closed = True
        if self.owned:
            self._remove()
        await anyio.lowlevel.checkpoint()
