"""Creating, opening and attaching named objects: one set of steps for every kind.

Every named kernel object aioipc makes (FIFO, POSIX and System V queue,
shared-memory segment, semaphore, ring) goes through :func:`create_or_open`,
so they all keep the same promises:

Rule 1 (cancellation): the call's one checkpoint comes first, so a call
cancelled there has made nothing that could leak.
Rule 2 (exclusive, exact): ``create`` never takes over an existing object
(``FileExistsError`` that names it and says how to remove it, unless
``exist_ok``), and the object gets exactly ``mode``, whatever the umask: it
is made no looser than asked, then set.
Rule 3 (ownership): a handle owns (removes on close) only what it created,
and not even that with ``persist=True``.

Files aioipc opens by path (locks, mapped files) are opened with
``O_NOFOLLOW`` and created with ``O_EXCL`` (:func:`open_file`): a planted
symbolic link is refused, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio.lowlevel

from .errors import Op, map_exceptions

__all__ = ["Kind", "create_or_open", "open_existing", "open_file"]

T = TypeVar("T")
N = TypeVar("N")


@dataclass(frozen=True)
class Kind(Generic[N]):
    """One kind of named object: what errors call it, how ``aioipc rm`` names it, its name rules.

    ``check`` validates a name (``ValueError``/``TypeError``) and returns it
    as the kernel wants it; ``scheme`` is the prefix ``aioipc rm`` takes.
    """

    label: str
    scheme: str
    check: Callable[[N], N]

    def shown(self, name: N) -> str:
        """The name as people read it: System V keys in hex."""
        return f"{name & 0xFFFFFFFF:#010x}" if isinstance(name, int) else str(name)

    def describe(self, name: N) -> str:
        """What errors call the object: "POSIX queue /jobs"."""
        return f"{self.label} {self.shown(name)}"

    def cleanup(self, name: N) -> str:
        """The command that removes a left-behind object of this kind."""
        return f"aioipc rm {self.scheme}:{self.shown(name)}"

    def map_errors(self, name: N, op: Op, *, reusable: bool = False) -> AbstractContextManager[None]:
        """:func:`~aioipc._core.errors.map_exceptions` for this object (``reusable``: it has ``exist_ok``)."""
        hint = f"remove it with `{self.cleanup(name)}`" + (
            ", or pass exist_ok=True to use it" if reusable else ""
        )
        return map_exceptions(self.describe(name), op=op, hint=hint)


async def create_or_open(
    kind: Kind[N],
    name: N,
    make: Callable[[N], T],
    open: Callable[[N], T] | None,
    *,
    create: bool = True,
    exist_ok: bool = False,
    persist: bool = False,
    exact_mode: Callable[[T], None] | None = None,
    discard: Callable[[T], None] | None = None,
) -> tuple[T, bool]:
    """Create ``name`` exclusively, or open the existing one (``create=False``); return ``(object, owned)``.

    Args:
        make: creates the object exclusively (an existing one raises, in any
            form :func:`map_exceptions` knows: ``FileExistsError``, posix_ipc's
            or sysv_ipc's ``ExistentialError``).
        open: opens an existing object; ``None`` for kinds that are only created.
        exact_mode: sets the asked mode on a created object (kinds the umask touches).
        discard: removes a created object when ``exact_mode`` failed.

    ``owned`` is true when this call created the object and ``persist`` is false.

    Raises:
        ValueError, TypeError: a bad name (``kind.check``).
        FileExistsError: ``create`` and it exists, without ``exist_ok``.
        FileNotFoundError: not ``create``, and it does not exist.
        PermissionError: its mode forbids it.
    """
    if not create:
        if open is None:
            raise ValueError(f"a {kind.label} can only be created")
        return await open_existing(kind, name, open), False
    await anyio.lowlevel.checkpoint()  # Rule 1: cancelled here, nothing exists yet to leak
    name = kind.check(name)
    try:
        with kind.map_errors(name, "create", reusable=open is not None):
            made = make(name)
    except FileExistsError:
        if not exist_ok or open is None:
            raise
        with kind.map_errors(name, "open"):
            return open(name), False
    if exact_mode is not None:
        try:
            exact_mode(made)
        except BaseException:
            if discard is not None:
                discard(made)
            raise
    return made, not persist


async def open_existing(kind: Kind[N], name: N, open: Callable[[N], T]) -> T:
    """Open (or attach) the existing object ``name``: Rule 1, the name check, and errors that name it.

    Raises:
        ValueError, TypeError: a bad name.
        FileNotFoundError: it does not exist.
        PermissionError: its mode forbids it.
    """
    await anyio.lowlevel.checkpoint()  # Rule 1: cancelled here, nothing exists yet to leak
    name = kind.check(name)
    with kind.map_errors(name, "open"):
        return open(name)


def open_file(path: str, *, mode: int = 0o600, create: bool = True) -> tuple[int, bool]:
    """Open the regular file ``path`` read-write, never through a symbolic link; return ``(fd, created)``.

    A missing file is created exclusively (``O_EXCL``) with exactly ``mode``.

    Raises:
        OSError: ``ELOOP``: ``path`` is a symbolic link (even a dangling one); as ``open()`` raises.
        ValueError: ``path`` is not a regular file.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    while True:
        try:
            try:
                fd, created = os.open(path, flags), False
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode & 0o600), True
                except FileExistsError:
                    continue  # made meanwhile, by someone else: open theirs
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(
                    errno.ELOOP, f"{path!r} is a symbolic link; aioipc does not follow links here", path
                ) from None
            raise
        break
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path!r} is not a regular file")
        if created:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        if created:
            os.unlink(path)
        raise
    return fd, created
