"""System V message queues as message streams, through a bridge thread.

Rule 1: try the call with ``IPC_NOWAIT`` on the loop thread first; only a
queue that is empty (receive) or full (send) goes to a bridge thread that
blocks in ``msgrcv`` / ``msgsnd``. Receiving and sending have one bridge
each, so a blocked receive never holds up a send.
Rule 2: nothing is taken that no receiver asked for. The receive bridge
takes one message per call and hands it to the ``receive()`` waiting for
it, so a process that dies loses at most the message it was handed, and
competing consumers share a queue fairly. A receive cancelled while the
thread waits loses nothing: the thread is interrupted (nothing taken), or
the one message it took waits in ``_taken`` for the next ``receive()``.
Rule 3: while a bridge call is unfinished, the loop-thread shortcut is not
used, so messages come out in the kernel's order.
Rule 4: exactly what was said: a cancelled ``send()`` whose blocking
``msgsnd`` was interrupted raises and sent nothing; one whose ``msgsnd``
completed at that moment returns normally (the cancellation came too
late), so a ``send()`` that raised never delivers.
Rule 5: a short spin before the bridge (``aioipc._core.spin``): an empty
(full) queue is polled on the loop thread for up to 50 µs before a wait
goes to the bridge, unless recent spins came to nothing; handing a wait to
the thread and its result back costs two thread wake-ups and a loop
wake-up, several times the kernel's own.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import sysv_ipc
from anyio import TypedAttributeSet, typed_attribute

from .._core.bridge import Bridge
from .._core.errors import FrameTooLarge, map_exceptions
from .._core.framing import DEFAULT_MAX_SIZE
from .._core.naming import Kind, create_or_open
from .._core.queues import SysVQueueCore, msg_handle, msg_receive, msg_send
from .._core.schemes import Address
from .._core.spin import Spin
from .._core.streams import FAIR_OPS, Buffer, QueueStream, fair_yield
from .._core.sysvipc import check_key, sysvipc_table

__all__ = [
    "MessageQueue",
    "MessageQueueInfo",
    "SysVQueueAttribute",
    "ftok",
    "list_message_queues",
    "remove_message_queue",
]

TYPE_MAX = 2**31 - 1  # sysv_ipc passes the type as a C int


def _read_limit(name: str, default: int) -> int:
    try:
        with open(f"/proc/sys/kernel/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def ftok(path: str | os.PathLike[str], proj: int) -> int:
    """The System V key C's ``ftok(path, proj)`` gives, as a signed 32-bit ``key_t``.

    Raises:
        ValueError: ``proj`` is not between 1 and 255.
        FileNotFoundError: ``path`` does not exist.

    Caveats:
        The key comes from the file's inode and device numbers: replacing the
        file (rather than keeping it) changes the key.
    """
    if not 1 <= proj <= 255:
        raise ValueError(f"proj must be from 1 to 255, not {proj}")
    path = os.fspath(path)
    os.stat(path)
    return check_key(sysv_ipc.ftok(path, proj, silence_warning=True))


def _interrupted(exc: BaseException) -> bool:
    # sysv_ipc raises its base Error class for EINTR and for nothing else in send/receive.
    return type(exc) is sysv_ipc.Error


_KIND = Kind("System V queue", "sysvmq", check_key)


def _map_errors(key: int) -> AbstractContextManager[None]:
    # Sizes and types are checked before each call, so EINVAL means a stale queue id.
    return _KIND.map_errors(key, "use")


class SysVQueueAttribute(TypedAttributeSet):
    """``queue.extra(...)`` attributes of a System V queue."""

    #: the key the queue was opened with (signed 32-bit ``key_t``)
    key: int = typed_attribute()
    #: the kernel's queue id (``msqid``)
    queue_id: int = typed_attribute()
    #: messages in the queue now
    current_messages: int = typed_attribute()
    #: bytes the queue holds at most (``msg_qbytes``)
    max_bytes: int = typed_attribute()
    #: the largest message this queue accepts (``msgmax`` and ``msg_qbytes``)
    max_message_size: int = typed_attribute()


class MessageQueue(SysVQueueCore, QueueStream):
    """A System V message queue: ``send(data, type=1)``, ``receive(type=0)``, ``async for``.

    Type selection (``msgrcv``): ``type=0`` the oldest message, ``type>0``
    the oldest of exactly that type, ``type<0`` the oldest of the lowest
    type at most ``-type``. Iterating (``async for``) receives with
    ``type=0`` until the queue is closed.

    Use :meth:`open`. Interoperates with C programs using ``msgget`` /
    ``msgsnd`` / ``msgrcv`` (``mtype`` is a ``long``; here from 1 to 2**31 - 1).

    Raises:
        FrameTooLarge: a message over ``max_message_size``; nothing was sent.
        anyio.BrokenResourceError: the queue was removed (``IPC_RMID``),
            including while a ``receive()`` or ``send()`` waited.
        anyio.ClosedResourceError: this handle was closed.
        anyio.BusyResourceError: two tasks received (or sent) at once.

    Caveats:
        A queue has no end of stream: closing one handle tells other
        processes nothing. A ``send()`` that raised (cancelled, timed out)
        sent nothing; a cancelled one whose message the kernel accepted at
        that moment returns normally (an anyio cancel scope cancels again
        at the next checkpoint). A receive takes one message only when a caller
        asks for it (no prefetching); a message taken by a receive that was
        cancelled at that moment is kept for the next ``receive()``, and put
        back at the end of the queue when the handle closes (unless it
        removes the queue). A ``receive()`` on an empty queue (a ``send()``
        on a full one) polls it for up to 50 µs before it parks, holding
        the loop meanwhile, unless recent polls came to nothing. Uses a
        no-op ``SIGURG`` handler (see ``aioipc._core.bridge``) to interrupt
        the bridge threads.

        With the accelerator, ``send()``, ``receive()`` and
        ``receive_with_type()`` return a coroutine without a frame of its
        own: awaits, ``asyncio`` tasks, ``asyncio.iscoroutine()`` and anyio
        take it as any other, but ``inspect.iscoroutine()`` says False.

    Example::

        key = aioipc.sysv.ftok("/etc/hostname", 7)
        async with await aioipc.sysv.MessageQueue.open(key, create=True) as q:
            await q.send(b"job", type=2)
            data, mtype = await q.receive_with_type(-5)
    """

    def __init__(self, queue: sysv_ipc.MessageQueue, *, owned: bool) -> None:
        self._queue = queue
        self.key: int = queue.key
        self.owned = owned
        self.max_message_size = min(_read_limit("msgmax", 8192), queue.max_size)
        self._taken: deque[tuple[bytes, int]] = deque()
        self._receiver = Bridge(f"msgrcv-{self.key:#x}", is_interrupted=_interrupted)
        self._sender = Bridge(f"msgsnd-{self.key:#x}", is_interrupted=_interrupted)
        self._receiving = False  # a task is in receive() (BusyResourceError for a second one)
        self._sending = False
        self._msgrcv = queue.receive  # blocking, in the bridge threads
        self._msgsnd = queue.send
        self._msq = msg_handle(queue)  # for msg_receive / msg_send (IPC_NOWAIT): None / False when busy
        self._bind(self._msq)
        # Fairness: operations left before a yield to the loop, one budget per direction. It is
        # also the fast paths' one test: 0 while a slow path or a bridge call is unfinished,
        # something is taken, or the direction is closed, so those go the slow way.
        self._receive_budget = FAIR_OPS
        self._send_budget = FAIR_OPS
        self._receive_spin = Spin()  # polls an empty (full) queue a little before a wait goes to the bridge
        self._send_spin = Spin()
        self._closed = False
        self._send_closed = False

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} key={self.key:#x} id={self._queue.id}{state}>"

    @classmethod
    async def open(
        cls,
        key: int,
        *,
        create: bool = False,
        exist_ok: bool = False,
        mode: int = 0o600,
        persist: bool = False,
    ) -> MessageQueue:
        """Open the queue with ``key``, or create it (exclusively) with ``create=True``.

        A handle that created the queue removes it on ``aclose()`` unless
        ``persist=True``; a handle that only opened it never does.

        Args:
            key: a non-zero number (e.g. from :func:`ftok`); unsigned 32-bit keys are accepted.
            exist_ok: with ``create``, open an existing queue instead of failing
                (the handle then does not own it).
            mode: permission bits of a created queue; 0600 (only this user) by default.

        Raises:
            FileExistsError: ``create`` and the queue exists (without ``exist_ok``).
            FileNotFoundError: no queue has this key (without ``create``).
            PermissionError: the queue's mode does not let this user in.
            OSError: ``ENOSPC``: the system's queue limit (``kernel.msgmni``) is reached.
            ValueError: ``key`` is 0 (``IPC_PRIVATE``) or not a 32-bit number.
        """
        size = _read_limit("msgmax", 8192)

        def make(key: int) -> sysv_ipc.MessageQueue:  # System V ignores the umask: exactly ``mode``
            return sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode, size)

        def existing(key: int) -> sysv_ipc.MessageQueue:
            return sysv_ipc.MessageQueue(key, 0, mode, size)

        queue, owned = await create_or_open(
            _KIND, key, make, existing, create=create, exist_ok=exist_ok, persist=persist
        )
        return cls(queue, owned=owned)

    # -- receiving -----------------------------------------------------------------------

    def _take(self, type: int) -> tuple[bytes, int] | None:
        """The message ``msgrcv(type)`` would return among those already taken, if any."""
        taken = self._taken
        if not taken:
            return None
        if type == 0:
            return taken.popleft()
        if type > 0:
            found = next((m for m in taken if m[1] == type), None)
        else:
            found = min((m for m in taken if m[1] <= -type), key=lambda m: m[1], default=None)
            if found is not None and found[1] > 1 and not self._receiver.busy:
                # The kernel may still hold a lower type than anything taken.
                with _map_errors(self.key):
                    lower = msg_receive(self._msq, self.max_message_size, True, 1 - found[1])
                if lower is not None:
                    return lower
        if found is not None:
            taken.remove(found)
        return found

    # send(), receive() and receive_with_type() are SysVQueueCore's: one call when the budget
    # allows and nothing must wait, else these slow paths.

    async def _receive(self, type: int, tried: bool, whole: bool) -> bytes | tuple[bytes, int]:
        """The slow path: ``tried`` when the fast path just found no message of ``type``;
        ``whole``: ``(data, mtype)``, else the data."""
        if not -TYPE_MAX <= type <= TYPE_MAX:
            raise ValueError(f"type must be from {-TYPE_MAX} to {TYPE_MAX}")
        if self._receiving:
            raise anyio.BusyResourceError("receiving")
        budget = self._receive_budget
        self._receiving = True
        self._receive_budget = 0
        try:
            if not budget:
                await fair_yield()
                budget = FAIR_OPS
                tried = False
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                found = self._take(type)
                if found is None and self._receiver.busy:
                    # A cancelled receive's call is finishing; what it took lands in _taken.
                    await self._receiver.wait_idle()
                    tried = False
                    continue
                with _map_errors(self.key):
                    if found is None and not tried:
                        found = msg_receive(self._msq, self.max_message_size, True, type)
                    if found is None:
                        found = self._receive_spin(
                            lambda: msg_receive(self._msq, self.max_message_size, True, type)
                        )
                    if found is not None:
                        # No checkpoint after a message was taken: a cancellation there would lose it.
                        return found if whole else found[0]
                    # The one message the thread takes is this receive's; taken after a cancel,
                    # it waits in _taken for the next receive.
                    message: tuple[bytes, int] = await self._receiver.run(
                        partial(self._msgrcv, True, type), orphan=self._taken.append
                    )
                    return message if whole else message[0]
        finally:
            self._receiving = False
            if not (self._taken or self._closed or self._receiver.busy):
                self._receive_budget = budget

    # -- sending -------------------------------------------------------------------------

    # send() is SysVQueueCore's (see receiving).

    async def _send(self, item: Buffer, type: int, tried: bool) -> None:
        """The slow path: checks, then wait for room; ``tried`` when the queue was just full."""
        size = len(item) if item.__class__ is bytes else memoryview(item).nbytes
        if size > self.max_message_size:
            raise FrameTooLarge(size, self.max_message_size)
        if not 1 <= type <= TYPE_MAX:
            raise ValueError(f"type must be from 1 to {TYPE_MAX}")
        if self._sending:
            raise anyio.BusyResourceError("sending")
        budget = self._send_budget
        self._sending = True
        self._send_budget = 0
        try:
            if not budget:
                await fair_yield()
                budget = FAIR_OPS
                tried = False
            if self._closed or self._send_closed:
                raise anyio.ClosedResourceError
            if self._sender.busy:
                # A cancelled send may still be finishing: let it go first, to keep the order.
                await self._sender.wait_idle()
                tried = False
                if self._closed or self._send_closed:
                    raise anyio.ClosedResourceError
            with _map_errors(self.key):
                if not tried and msg_send(self._msq, item, type):
                    return
                if not self._send_spin(partial(msg_send, self._msq, item, type)):
                    await self._sender.run(partial(self._msgsnd, item, True, type), all_or_nothing=True)
        finally:
            self._sending = False
            if not (self._closed or self._send_closed or self._sender.busy):
                self._send_budget = budget

    # -- closing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the handle (idempotent); remove the queue if this handle created it.

        Waiting tasks get ``ClosedResourceError``; the bridge threads stop.
        """
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        self._receive_budget = self._send_budget = 0
        try:
            with anyio.CancelScope(shield=True):
                await self._receiver.aclose()
                await self._sender.aclose()
        finally:  # the queue is removed even by a cancelled or forceful close
            if self.owned:
                try:
                    self._queue.remove()
                except sysv_ipc.ExistentialError:
                    pass
            else:
                self._put_back()

    def _put_back(self) -> None:
        """Return messages taken but never received to the queue (best effort, at its end)."""
        while self._taken:
            data, mtype = self._taken[0]
            try:
                self._queue.send(data, False, mtype)
            except sysv_ipc.Error:
                break
            self._taken.popleft()
        self._taken.clear()

    def remove(self) -> None:
        """Remove the queue from the system now (``IPC_RMID``); waiting receivers get an error.

        Raises:
            anyio.BrokenResourceError: it was removed already.
        """
        with _map_errors(self.key):
            self._queue.remove()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        queue = self._queue
        return {
            SysVQueueAttribute.key: lambda: self.key,
            SysVQueueAttribute.queue_id: lambda: queue.id,
            SysVQueueAttribute.current_messages: lambda: queue.current_messages,
            SysVQueueAttribute.max_bytes: lambda: queue.max_size,
            SysVQueueAttribute.max_message_size: lambda: self.max_message_size,
        }


class MessageQueueInfo(NamedTuple):
    """One System V queue as ``/proc/sysvipc/msg`` shows it."""

    key: int
    queue_id: int
    uid: int
    mode: int
    current_messages: int
    current_bytes: int
    #: ``msg_qbytes``; ``None`` when this user may not look (or the key is ``IPC_PRIVATE``)
    max_bytes: int | None


def list_message_queues() -> list[MessageQueueInfo]:
    """Every System V message queue in this IPC namespace (from ``/proc/sysvipc/msg``)."""
    queues = []
    for row in sysvipc_table("msg"):
        key = row["key"]
        max_bytes = None
        if key != sysv_ipc.IPC_PRIVATE:
            try:
                max_bytes = sysv_ipc.MessageQueue(key).max_size
            except sysv_ipc.Error:
                pass
        queues.append(
            MessageQueueInfo(
                key, row["msqid"], row["uid"], row["perms"] & 0o777, row["qnum"], row["cbytes"], max_bytes
            )
        )
    return queues


def remove_message_queue(key: int | None = None, *, queue_id: int | None = None) -> None:
    """Remove a System V queue by key or by id (``IPC_RMID``).

    Raises:
        FileNotFoundError: no such queue.
        PermissionError: it belongs to another user.
        ValueError: neither or both of ``key`` and ``queue_id`` given, or a bad key.
    """
    if (key is None) == (queue_id is None):
        raise ValueError("give exactly one of key and queue_id")
    name = f"System V queue {'key ' + hex(key & 0xFFFFFFFF) if key is not None else f'id {queue_id}'}"
    with map_exceptions(name, op="remove"):
        if key is not None:
            queue_id = sysv_ipc.MessageQueue(check_key(key)).id
        assert queue_id is not None
        sysv_ipc.remove_message_queue(queue_id)


def _address_key(address: Address) -> int:
    if address.key is not None:
        return address.key
    assert address.proj is not None
    return ftok(address.path, address.proj)


def remove_address(address: Address) -> None:
    """``aioipc rm sysvmq:KEY``: remove the queue.

    Raises:
        FileNotFoundError: no such queue.
    """
    remove_message_queue(_address_key(address))


async def connect_address(
    address: Address, *, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None, **options: Any
) -> MessageQueue:
    """``connect("sysvmq:KEY")``: open the existing queue (the core retries it within ``timeout``);
    ``serve("sysvmq:KEY", handler)`` creates it through here (``create=True``) and hands it to ``handler``."""
    return await MessageQueue.open(_address_key(address), **options)
