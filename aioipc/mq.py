"""POSIX message queues as message streams, on the event loop (no thread).

A queue descriptor is a file descriptor on Linux that ``poll`` understands
(readable: a message is waiting; writable: there is room), so it is
registered with the running loop through its :class:`FdHandle`: try
``mq_send`` / ``mq_receive`` on the non-blocking descriptor, park only
when the queue is empty or full, after a short spin (``aioipc._core.spin``:
a peer on another CPU often answers within microseconds, and a park and
its wake-up cost several times that). Like every stream, a queue yields to
the loop once every ``FAIR_OPS`` operations that did not wait.

Example::

    async with await aioipc.mq.open("/jobs", create=True) as q:
        await q.send(b"urgent", priority=5)
        data, priority = await q.receive_with_priority()

Addresses: ``mq:/name``; ``aioipc.serve()`` creates the queue and
``aioipc.connect()`` opens it.

Caveats:
    Linux only. The kernel caps each queue (``/proc/sys/fs/mqueue/msg_max``
    messages of ``msgsize_max`` bytes, for processes without
    ``CAP_SYS_RESOURCE``), the number of queues (``queues_max``) and the
    bytes each user's queues may reserve (``RLIMIT_MSGQUEUE``, ``ulimit -q``);
    a request over one of them is an error that names it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import posix_ipc
from anyio import TypedAttributeSet, typed_attribute

from ._core import leftovers
from ._core.attributes import IPCAttribute
from ._core.errors import FrameTooLarge
from ._core.fdstreams import FdHandle
from ._core.framing import DEFAULT_MAX_SIZE
from ._core.naming import Kind, create_or_open
from ._core.queues import PosixQueueCore, mq_handle, mq_receive, mq_send
from ._core.schemes import Address
from ._core.spin import Spin
from ._core.streams import FAIR_OPS, Buffer, QueueStream, byte_view, fair_yield

__all__ = [
    "MOUNT_POINT",
    "MessageQueue",
    "QueueAttribute",
    "QueueInfo",
    "list_queues",
    "open",
    "unlink",
]

MOUNT_POINT = "/dev/mqueue"
PRIORITY_MAX = posix_ipc.QUEUE_PRIORITY_MAX
_NAME_MAX = 255
_LIMITS = "/proc/sys/fs/mqueue"


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a queue name is a str, not {type(name).__name__}")
    if not name.startswith("/") or "/" in name[1:] or len(name) < 2:
        raise ValueError(f"bad queue name {name!r}: it must be one '/' followed by other characters")
    if len(os.fsencode(name)) - 1 > _NAME_MAX:
        raise ValueError(f"bad queue name {name!r}: at most {_NAME_MAX} bytes after the '/'")
    if "\0" in name:
        raise ValueError(f"bad queue name {name!r}: NUL character")
    return name


_KIND = Kind("POSIX queue", "mq", _check_name)


def _limit(name: str) -> int | None:
    try:
        return int(Path(_LIMITS, name).read_text())
    except (OSError, ValueError):
        return None


def _is_mounted(mount_point: str) -> bool:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return os.path.isdir(mount_point)
    target = os.path.realpath(mount_point)
    return any(len(f := line.split()) > 2 and f[2] == "mqueue" and f[1] == target for line in mounts)


def _explain_create_error(exc: BaseException, name: str, max_messages: int, max_message_size: int) -> OSError:
    """Turn posix_ipc's errno-less error into one that names the limit and how to raise it."""
    text = str(exc)
    if isinstance(exc, ValueError) and "Invalid" in text:
        msg_max, msgsize_max = _limit("msg_max"), _limit("msgsize_max")
        if max_messages < 1 or max_message_size < 1:
            why = "max_messages and max_message_size must be at least 1"
        elif msg_max is not None and max_messages > msg_max:
            why = (
                f"max_messages={max_messages} is over the kernel limit fs.mqueue.msg_max={msg_max} "
                f"(raise it as root: sysctl fs.mqueue.msg_max={max_messages})"
            )
        elif msgsize_max is not None and max_message_size > msgsize_max:
            why = (
                f"max_message_size={max_message_size} is over the kernel limit "
                f"fs.mqueue.msgsize_max={msgsize_max} "
                f"(raise it as root: sysctl fs.mqueue.msgsize_max={max_message_size})"
            )
        else:
            why = "the kernel refused the queue's size (hard caps: 65536 messages, 16 MiB per message)"
        return OSError(errno.EINVAL, f"cannot create the queue {name}: {why}")
    if "Insufficient space" in text:
        return OSError(
            errno.ENOSPC,
            f"cannot create the queue {name}: the kernel limit fs.mqueue.queues_max={_limit('queues_max')} "
            "queues is reached (remove unused queues, or raise it as root: sysctl fs.mqueue.queues_max=N)",
        )
    if "maximum number of files" in text:
        soft, _ = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
        return OSError(
            errno.EMFILE,
            f"cannot create the queue {name}: this user's queues would reserve more than "
            f"RLIMIT_MSGQUEUE={soft} bytes (about max_messages x (max_message_size + 48) bytes each; "
            "raise it with `ulimit -q` or LimitMSGQUEUE= in a systemd unit), "
            "or the process has too many files open",
        )
    return OSError(errno.EIO, f"cannot open the queue {name}: {text}")


class QueueAttribute(TypedAttributeSet):
    """``queue.extra(...)`` attributes of a POSIX queue (read from the kernel each time)."""

    #: messages waiting in the queue now
    current_messages: int = typed_attribute()
    #: how many messages the queue holds at most
    max_messages: int = typed_attribute()
    #: the largest message the queue accepts, in bytes
    max_message_size: int = typed_attribute()


class MessageQueue(PosixQueueCore, QueueStream):
    """A POSIX message queue: ``send(data, priority=0)``, ``receive()``, ``async for``.

    Higher priorities are received first; equal priorities in order.
    Iterating (``async for``) receives until the handle is closed. Use :func:`open`.

    Raises:
        FrameTooLarge: a message over ``max_message_size``; nothing was sent.
        anyio.ClosedResourceError: this handle was closed (also wakes a waiting task).
        anyio.BusyResourceError: two tasks received (or sent) at once.

    Caveats:
        A queue has no end of stream: closing one handle tells other
        processes nothing. A full queue makes ``send()`` wait (backpressure).
        A ``receive()`` on an empty queue (a ``send()`` on a full one) polls
        it for up to 50 µs before it parks, holding the loop meanwhile,
        unless recent polls came to nothing.

        With the accelerator, ``send()``, ``receive()`` and
        ``receive_with_priority()`` return a coroutine without a frame of
        its own: awaits, ``asyncio`` tasks, ``asyncio.iscoroutine()`` and
        anyio take it as any other, but ``inspect.iscoroutine()`` says False.
    """

    def __init__(
        self, queue: posix_ipc.MessageQueue, *, name: str, owned: bool, read: bool, write: bool
    ) -> None:
        self.name = name
        self.owned = owned
        self.max_message_size: int = queue.max_message_size
        self.max_messages: int = queue.max_messages
        self._queue = queue
        self._handle = FdHandle(queue.mqd)  # non-blocking from here on
        self._mq = mq_handle(queue)  # for mq_receive / mq_send: None / False for an empty / full queue
        self._bind(self._mq)
        self._can_read = read
        self._can_write = write
        self._receiving = False  # a task is in _receive() (BusyResourceError for a second one)
        self._sending = False
        self._send_closed = False
        # Fairness: operations left before a yield to the loop, one budget per direction. It is
        # also the fast paths' one test: 0 while a slow path runs, something is kept, or the
        # direction is closed or not opened, so those go the slow way, which tells them apart.
        self._receive_budget = FAIR_OPS if read else 0
        self._send_budget = FAIR_OPS if write else 0
        self._receive_spin = Spin()  # polls an empty (full) queue a little before a wait parks
        self._send_spin = Spin()
        self._kept: deque[tuple[bytes, int]] = deque()  # taken for a receive that was then cancelled
        self._keep = self._kept.append

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} fd={self._handle.fd}>"

    def fileno(self) -> int:
        """The queue descriptor (an fd the loop polls)."""
        return self._handle.fd

    def _receive_now(self, fd: int) -> tuple[bytes, int]:
        """One ``mq_receive`` on the non-blocking descriptor (run by ``FdHandle.read``)."""
        message = mq_receive(self._mq, self.max_message_size, True)
        if message is None:
            raise BlockingIOError
        return message

    # send(), receive() and receive_with_priority() are PosixQueueCore's: one call when the
    # budget allows and nothing must wait, else these slow paths.

    async def _receive(self, tried: bool, whole: bool) -> bytes | tuple[bytes, int]:
        """The slow path: ``tried`` when the fast path just found the queue empty; ``whole``:
        ``(data, priority)``, else the data."""
        if not self._can_read:
            raise PermissionError("this queue handle was opened with read=False")
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        handle = self._handle
        if handle.fd < 0:
            raise anyio.ClosedResourceError
        if self._kept:
            kept = self._kept.popleft()  # the budget stays 0: the next receive yields first
            return kept if whole else kept[0]
        budget = self._receive_budget
        self._receiving = True
        self._receive_budget = 0
        try:
            if not budget:
                await fair_yield()
                budget = FAIR_OPS
                tried = False
            message = None if tried else mq_receive(self._mq, self.max_message_size, True)
            if message is None:
                message = self._receive_spin(lambda: mq_receive(self._mq, self.max_message_size, True))
            if message is None:
                # Taken in a loop callback; a receive cancelled after that leaves it in _kept.
                # FdHandle.read's wait, awaited here: one coroutine fewer while parked.
                waiter = handle.park_read(self._receive_now)
                try:
                    message = await waiter
                except asyncio.CancelledError:
                    handle.keep_read(waiter, self._keep)
                    raise
                finally:
                    handle.end_read()
            return message if whole else message[0]
        finally:
            self._receiving = False
            if not self._kept and handle.fd >= 0:
                self._receive_budget = budget

    async def _send(self, item: Buffer, priority: int, tried: bool) -> None:
        """The slow path: checks, then wait for room; ``tried`` when the queue was just full."""
        if type(item) is not bytes:
            item = byte_view(item)
        size = len(item)
        if size > self.max_message_size:
            raise FrameTooLarge(size, self.max_message_size)
        if priority and not 0 <= priority <= PRIORITY_MAX:
            raise ValueError(f"priority must be from 0 to {PRIORITY_MAX}")
        if not self._can_write:
            raise PermissionError("this queue handle was opened with write=False")
        if self._sending:
            raise anyio.BusyResourceError("sending")
        handle = self._handle
        budget = self._send_budget
        self._sending = True
        self._send_budget = 0
        try:
            if not budget:
                await fair_yield()
                budget = FAIR_OPS
                tried = False
            while True:
                if handle.fd < 0 or self._send_closed:
                    raise anyio.ClosedResourceError
                if not tried and mq_send(self._mq, item, priority):
                    return
                if self._send_spin(partial(mq_send, self._mq, item, priority)):
                    return
                await handle.wait_writable()
                tried = False
        finally:
            self._sending = False
            if not self._send_closed and handle.fd >= 0:
                self._send_budget = budget

    async def aclose(self) -> None:
        """Close the descriptor (idempotent); unlink the queue if this handle created it.

        A task waiting in ``receive()`` or ``send()`` gets ``ClosedResourceError``.
        A message taken for a receive that was then cancelled, and never
        received, goes back to the queue (with its priority) unless the queue
        is being unlinked.
        """
        if not self._handle.closed:
            self._receive_budget = self._send_budget = 0
            while self._kept and not self.owned and self._can_write:
                data, priority = self._kept[0]
                try:
                    self._queue.send(data, None, priority)
                except (posix_ipc.Error, OSError):  # full: nothing more can be done without waiting
                    break
                self._kept.popleft()
            self._kept.clear()
            self._handle.close()  # also wakes a waiting task and drops our registrations
            if self.owned:
                try:
                    posix_ipc.unlink_message_queue(self.name)
                except posix_ipc.ExistentialError:
                    pass
                leftovers.forget("mq", self.name)
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        queue = self._queue
        return {
            IPCAttribute.fd: self.fileno,
            IPCAttribute.path: lambda: self.name,
            QueueAttribute.current_messages: lambda: queue.current_messages,
            QueueAttribute.max_messages: lambda: self.max_messages,
            QueueAttribute.max_message_size: lambda: self.max_message_size,
        }


async def open(
    name: str,
    *,
    create: bool = False,
    exist_ok: bool = False,
    max_messages: int = 10,
    max_message_size: int = 8192,
    mode: int = 0o600,
    persist: bool = False,
    read: bool = True,
    write: bool = True,
) -> MessageQueue:
    """Open the POSIX queue ``name``, or create it (exclusively) with ``create=True``.

    A handle that created the queue unlinks it on ``aclose()`` unless
    ``persist=True``; a handle that only opened it never does.

    Args:
        name: ``/`` followed by up to 255 characters, no other ``/``.
        exist_ok: with ``create``, open an existing queue instead of failing
            (the handle then does not own it, and keeps that queue's sizes).
        max_messages, max_message_size: the size of a created queue.
        mode: the created queue's permission bits, set exactly (0600: only this user).
        read, write: open only one direction (both by default).

    Raises:
        ValueError: a bad name, or neither ``read`` nor ``write``.
        FileExistsError: ``create`` and the queue exists (without ``exist_ok``).
        FileNotFoundError: no such queue (without ``create``).
        PermissionError: the queue's mode does not let this user in.
        OSError: a kernel limit refused the queue (``EINVAL``: ``fs.mqueue.msg_max``
            or ``msgsize_max``; ``ENOSPC``: ``queues_max``; ``EMFILE``:
            ``RLIMIT_MSGQUEUE``); the message names the limit and how to raise it.

    Example::

        async with await aioipc.mq.open("/jobs", create=True, max_messages=10) as q:
            async for message in q:
                print(message)
    """
    if not (read or write):
        raise ValueError("a queue must be opened for reading, writing, or both")

    def make(name: str) -> posix_ipc.MessageQueue:
        try:  # created with mode minus the umask (never looser), then set exactly
            queue = posix_ipc.MessageQueue(
                name, posix_ipc.O_CREX, mode & 0o777, max_messages, max_message_size, read=read, write=write
            )
        except (ValueError, OSError) as exc:
            raise _explain_create_error(exc, name, max_messages, max_message_size) from None
        leftovers.note("mq", name)  # for `aioipc ls` without /dev/mqueue, should a crash leave it
        return queue

    def discard(queue: posix_ipc.MessageQueue) -> None:
        queue.close()
        posix_ipc.unlink_message_queue(queue.name)

    queue, owned = await create_or_open(
        _KIND,
        name,
        make,
        lambda name: posix_ipc.MessageQueue(name, read=read, write=write),
        create=create,
        exist_ok=exist_ok,
        persist=persist,
        exact_mode=lambda queue: os.fchmod(queue.mqd, mode & 0o777),
        discard=discard,
    )
    return MessageQueue(queue, name=name, owned=owned, read=read, write=write)


def unlink(name: str) -> None:
    """Remove the queue ``name``; handles still open keep working until they close.

    Raises:
        ValueError: a bad name.
        FileNotFoundError: no such queue.
        PermissionError: it belongs to another user.
    """
    with _KIND.map_errors(_check_name(name), "remove"):
        leftovers.forget("mq", name)
        posix_ipc.unlink_message_queue(name)


class QueueInfo(NamedTuple):
    """One POSIX queue as ``/dev/mqueue`` shows it."""

    name: str
    uid: int
    mode: int
    current_bytes: int
    #: these three are ``None`` when this user may not open the queue
    current_messages: int | None
    max_messages: int | None
    max_message_size: int | None


def list_queues(mount_point: str = MOUNT_POINT) -> list[QueueInfo]:
    """Every POSIX queue in this IPC namespace, from the mqueue filesystem.

    Raises:
        FileNotFoundError: the mqueue filesystem is not mounted at
            ``mount_point``; the message says how to mount it (queues work
            without it, only listing needs it).
    """
    if not _is_mounted(mount_point):
        raise FileNotFoundError(
            errno.ENOENT,
            f"the mqueue filesystem is not mounted, so queues cannot be listed; mount it as root with "
            f"`mkdir -p {mount_point} && mount -t mqueue none {mount_point}`",
            mount_point,
        )
    queues = []
    for entry in sorted(os.listdir(mount_point)):
        path = os.path.join(mount_point, entry)
        try:
            st = os.stat(path)
            fields = dict(part.split(":", 1) for part in Path(path).read_text().split())
        except OSError:
            continue
        counts: tuple[int | None, int | None, int | None] = (None, None, None)
        try:
            queue = posix_ipc.MessageQueue("/" + entry, read=True, write=False)
        except (posix_ipc.Error, OSError, ValueError):
            pass
        else:
            try:
                counts = (queue.current_messages, queue.max_messages, queue.max_message_size)
            finally:
                queue.close()
        queues.append(
            QueueInfo("/" + entry, st.st_uid, st.st_mode & 0o777, int(fields.get("QSIZE", 0)), *counts)
        )
    return queues


def remove_address(address: Address) -> None:
    """``aioipc rm mq:/name``: :func:`unlink` the queue."""
    unlink(address.path)


async def connect_address(
    address: Address, *, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None, **options: Any
) -> MessageQueue:
    """``connect("mq:/name")``: open the existing queue (the core retries it within ``timeout``);
    ``serve("mq:/name", handler)`` creates it through here (``create=True``) and hands it to ``handler``."""
    return await open(address.path, **options)
