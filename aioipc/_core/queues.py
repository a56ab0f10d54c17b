"""Message queues' accelerated calls and fast paths: compiled, or their pure-Python twins.

Which of them runs follows :data:`aioipc._core.speedups.ACTIVE` (the
accelerator built, and not turned off by ``AIOIPC_NO_SPEEDUPS=1``); the
callers cannot tell which did. Two layers: one call on a queue that never
blocks (``mq_*`` for POSIX, ``msg_*`` for System V), and the bases of the
two ``MessageQueue`` classes (:data:`PosixQueueCore`, :data:`SysVQueueCore`),
whose ``send()`` and ``receive()`` do what needs no waiting in one call.
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from .speedups import ACTIVE, compiled

__all__ = [
    "PosixQueueCore",
    "PyPosixQueueCore",
    "PySysVQueueCore",
    "SysVQueueCore",
    "mq_handle",
    "mq_receive",
    "mq_send",
    "msg_handle",
    "msg_receive",
    "msg_send",
]


# -- message queues: one call that never blocks, None (False) when the queue is empty (full) ----
#
# A consumer that keeps up with its producer finds the queue empty every few messages (and a
# producer finds it full), so "would block" is an answer here, not an exception: posix_ipc and
# sysv_ipc raise BusyError for it, the accelerator returns None / False. The calls take the
# queue as :func:`mq_handle` / :func:`msg_handle` give it (the accelerator's is the descriptor or
# the id, so a call is one C call). The receive buffer is the queue's own limit (``size``:
# mq_msgsize, msgmax), never a size a peer announces. A send refuses (raises, sends nothing)
# what the kernel would: over the size, a priority (type) out of range, and anything but bytes,
# bytearray or memoryview, so callers need not check first.

_BYTES_LIKE = (bytes, bytearray, memoryview)  # posix_ipc / sysv_ipc would encode a str, or crash
_INT_MAX = 2**31 - 1  # System V types: a C int, from -_INT_MAX to _INT_MAX
_POSIX_BUSY: type[Exception] = Exception  # the libraries' BusyError, for the pure-Python calls
_SYSV_BUSY: type[Exception] = Exception
# what a call may raise when it refused its arguments or the queue (nothing was sent or taken)
_QUEUE_REFUSALS: tuple[type[Exception], ...] = (TypeError, ValueError, OverflowError, BufferError, OSError)


class _NoSysV(Exception):
    """Stands for sysv_ipc's exceptions where sysv_ipc is not installed (nothing raises it)."""


def _library_error(module: str, name: str = "BusyError") -> type[Exception]:
    """posix_ipc's or sysv_ipc's BusyError (or ``name``), looked up once (sysv_ipc is optional)."""
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except ImportError:
        return _NoSysV


def _check_bytes_like(data: Any) -> None:
    if type(data) not in _BYTES_LIKE:
        raise TypeError(f"a message is bytes-like, not {type(data).__name__}")


def _py_mq_receive(queue: Any, size: int, with_priority: bool) -> Any:
    """posix_ipc's receive on ``queue`` (a ``posix_ipc.MessageQueue`` on a non-blocking descriptor)."""
    try:
        message = queue.receive()
    except _POSIX_BUSY:
        return None
    return message if with_priority else message[0]


def _py_mq_send(queue: Any, data: Any, priority: int) -> bool:
    _check_bytes_like(data)
    try:
        if priority:
            queue.send(data, None, priority)
        else:  # posix_ipc parses one argument faster than three
            queue.send(data)
    except _POSIX_BUSY:
        return False
    return True


def _py_msg_receive(queue: Any, size: int, with_type: bool, type: int) -> Any:
    """sysv_ipc's receive on ``queue`` (a ``sysv_ipc.MessageQueue``), with ``IPC_NOWAIT``."""
    if not -_INT_MAX <= type <= _INT_MAX:  # sysv_ipc would take -2**31
        raise OverflowError("type out of range")
    try:
        message = queue.receive(False, type)
    except _SYSV_BUSY:
        return None
    return message if with_type else message[0]


def _py_msg_send(queue: Any, data: Any, mtype: int) -> bool:
    _check_bytes_like(data)
    try:
        queue.send(data, False, mtype)
    except _SYSV_BUSY:
        return False
    return True


def _choose_queue_calls() -> tuple[Callable[..., Any], ...]:
    global _POSIX_BUSY, _SYSV_BUSY, _QUEUE_REFUSALS
    if ACTIVE:
        from . import _speedups  # type: ignore[attr-defined]

        return (
            operator.attrgetter("mqd"),
            _speedups.mq_receive,
            _speedups.mq_send,
            operator.attrgetter("id"),
            _speedups.msg_receive,
            _speedups.msg_send,
        )
    _POSIX_BUSY, _SYSV_BUSY = _library_error("posix_ipc"), _library_error("sysv_ipc")
    _QUEUE_REFUSALS += (_library_error("posix_ipc", "Error"), _library_error("sysv_ipc", "Error"))
    return (
        lambda queue: queue,
        _py_mq_receive,
        _py_mq_send,
        lambda queue: queue,
        _py_msg_receive,
        _py_msg_send,
    )


class _MqReceive(Protocol):
    @overload
    def __call__(self, handle: Any, size: int, with_priority: Literal[False], /) -> bytes | None: ...
    @overload
    def __call__(
        self, handle: Any, size: int, with_priority: Literal[True], /
    ) -> tuple[bytes, int] | None: ...


class _MsgReceive(Protocol):
    @overload
    def __call__(self, handle: Any, size: int, with_type: Literal[False], type: int, /) -> bytes | None: ...
    @overload
    def __call__(
        self, handle: Any, size: int, with_type: Literal[True], type: int, /
    ) -> tuple[bytes, int] | None: ...


mq_handle: Callable[[Any], Any]
"""The handle the ``mq_*`` calls take for a ``posix_ipc.MessageQueue`` (whose descriptor is non-blocking)."""
mq_receive: _MqReceive
"""``mq_receive(handle, size, with_priority)``: the next message's data, or ``(data, priority)``;
``None`` when the queue is empty. ``size`` is the queue's ``max_message_size``."""
mq_send: Callable[[Any, Any, int], bool]
"""``mq_send(handle, data, priority)``: True, or False when the queue is full."""
msg_handle: Callable[[Any], Any]
"""The handle the ``msg_*`` calls take for a ``sysv_ipc.MessageQueue``."""
msg_receive: _MsgReceive
"""``msg_receive(handle, size, with_type, type)``: the data of the next message ``msgrcv(type)``
selects, or ``(data, mtype)``; ``None`` when there is none. A message over ``size`` stays queued
(an error, ``E2BIG``)."""
msg_send: Callable[[Any, Any, int], bool]
"""``msg_send(handle, data, type)``: True, or False when the queue is full."""
mq_handle, mq_receive, mq_send, msg_handle, msg_receive, msg_send = _choose_queue_calls()


# -- message queues: send() and receive() in one call when nothing must wait -----------------------


class _PyQueueCore:
    """What :class:`PyPosixQueueCore` and :class:`PySysVQueueCore` share: the budgets, the one calls.

    ``_receive_budget`` / ``_send_budget``: operations left before a yield to
    the loop, one per direction. They are also the fast paths' one test: the
    subclass keeps one at 0 while its slow path runs, a message is kept, or
    the direction is closed or not opened, so those go the slow way.
    """

    max_message_size: int
    _receive_budget = _send_budget = 0
    _core_queue: Any = None
    _core_send: Callable[[Any, Any, int], bool]
    _core_receive: Callable[[Any, int, bool, int], Any]

    def _bind(self, handle: Any) -> None:
        """The queue as :func:`mq_handle` / :func:`msg_handle` give it, for the fast paths."""
        self._core_queue = handle

    def _fast_send(self, item: Any, tag: int) -> bool | None:
        """Send ``item`` now if the budget allows: True (sent), False (full), None (not tried, or refused)."""
        if self._send_budget <= 0:
            return None
        self._send_budget -= 1
        try:
            size = len(item) if type(item) is bytes else memoryview(item).nbytes
            if size > self.max_message_size:  # the kernel's limit may be higher (System V): ours holds
                return None
            return self._core_send(self._core_queue, item, tag)
        except _QUEUE_REFUSALS:  # nothing was sent; the slow path checks, and says why
            return None

    def _fast_receive(self, whole: bool, type: int) -> Any:
        """The next message now if the budget allows: the data (``(data, tag)`` with ``whole``),
        False (empty), None (not tried, or refused)."""
        if self._receive_budget <= 0:
            return None
        self._receive_budget -= 1
        try:
            message = self._core_receive(self._core_queue, self.max_message_size, whole, type)
        except _QUEUE_REFUSALS:
            return None
        return False if message is None else message


class PyPosixQueueCore(_PyQueueCore):
    """The base of ``aioipc.mq.MessageQueue``: its budgets, and ``send()`` / ``receive()`` fast paths.

    A send or receive that the budget allows and that needs no waiting is
    one call; otherwise the subclass's slow path runs: ``_send(item,
    priority, tried)`` or ``_receive(tried, whole)`` (``tried``: the queue was
    just found full or empty), which also raises every error. The compiled
    ``PosixQueueCore`` is the same, but its ``send()`` and ``receive()``
    return a coroutine without a frame (``FastOp``).
    """

    _core_send = staticmethod(mq_send)
    _core_receive = staticmethod(lambda queue, size, whole, type: mq_receive(queue, size, whole))
    _send: Callable[[Any, int, bool], Coroutine[Any, Any, None]]
    _receive: Callable[[bool, bool], Coroutine[Any, Any, Any]]

    async def send(self, item: Any, priority: int = 0) -> None:
        """Send one message; wait while the queue is full.

        Raises:
            FrameTooLarge: the message is larger than :attr:`max_message_size`.
            ValueError: ``priority`` is not from 0 to ``PRIORITY_MAX`` (32767).
            TypeError: ``item`` is not bytes-like.
            PermissionError: the queue was opened with ``write=False``.
        """
        sent = self._fast_send(item, priority)
        if not sent:
            await self._send(item, priority, sent is False)

    async def receive(self) -> bytes:
        """Receive the next message's data (see :meth:`receive_with_priority`)."""
        data = self._fast_receive(False, 0)
        if data is None or data is False:
            data = await self._receive(data is False, False)
        return data  # type: ignore[no-any-return]

    async def receive_with_priority(self) -> tuple[bytes, int]:
        """Receive the oldest message of the highest priority; return ``(data, priority)``.

        Raises:
            PermissionError: the queue was opened with ``read=False``.
        """
        message = self._fast_receive(True, 0)
        if message is None or message is False:
            message = await self._receive(message is False, True)
        return message  # type: ignore[no-any-return]


class PySysVQueueCore(_PyQueueCore):
    """The base of ``aioipc.sysv.MessageQueue``: as :class:`PyPosixQueueCore`, with ``type``.

    The slow paths: ``_send(item, type, tried)`` and ``_receive(type, tried, whole)``.
    """

    _core_send = staticmethod(msg_send)
    _core_receive = staticmethod(lambda queue, size, whole, type: msg_receive(queue, size, whole, type))
    _send: Callable[[Any, int, bool], Coroutine[Any, Any, None]]
    _receive: Callable[[int, bool, bool], Coroutine[Any, Any, Any]]

    async def send(self, item: Any, type: int = 1) -> None:
        """Send one message of ``type`` (1 to 2**31 - 1); wait while the queue is full.

        Raises:
            FrameTooLarge: the message is larger than :attr:`max_message_size`.
            ValueError: ``type`` out of range.
            TypeError: ``item`` is not bytes-like.
        """
        sent = self._fast_send(item, type)
        if not sent:
            await self._send(item, type, sent is False)

    async def receive(self, type: int = 0) -> bytes:
        """Receive the data of the next message matching ``type`` (see :meth:`receive_with_type`)."""
        data = self._fast_receive(False, type)
        if data is None or data is False:
            data = await self._receive(type, data is False, False)
        return data  # type: ignore[no-any-return]

    async def receive_with_type(self, type: int = 0) -> tuple[bytes, int]:
        """Receive the next message matching ``type``; return ``(data, mtype)``.

        Raises:
            ValueError: ``type`` out of range.
            anyio.BrokenResourceError: the queue was removed.
        """
        message = self._fast_receive(True, type)
        if message is None or message is False:
            message = await self._receive(type, message is False, True)
        return message  # type: ignore[no-any-return]


if TYPE_CHECKING:
    PosixQueueCore = PyPosixQueueCore
    SysVQueueCore = PySysVQueueCore
else:
    PosixQueueCore = compiled("PosixQueueCore", PyPosixQueueCore)
    SysVQueueCore = compiled("SysVQueueCore", PySysVQueueCore)
    """The bases of the two MessageQueue classes: compiled, or their pure-Python twins."""
