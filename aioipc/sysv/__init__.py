"""System V IPC, compatible with C programs that use ``msgget``/``msgsnd``/``msgrcv``,
``shmget``/``shmat`` and ``semget``/``semop`` on the same keys.

System V objects have no file descriptor, so each queue or semaphore runs
its blocking calls in bridge threads that sleep in the kernel (no polling)
and wake the loop when something happens.

Example::

    key = aioipc.sysv.ftok(".", 1)         # any path that exists, as C computes it
    async with await aioipc.sysv.MessageQueue.open(key, create=True) as q:
        async for message in q:
            ...

Addresses: ``sysvmq:KEY`` (decimal or 0x-hex) and ``sysvmq:/path#proj``;
``aioipc.serve()`` creates the queue and ``aioipc.connect()`` opens it.

Requires the ``sysv`` extra (``pip install aioipc[sysv]``).
"""

from __future__ import annotations

try:
    import sysv_ipc  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("aioipc.sysv needs sysv_ipc: pip install 'aioipc[sysv]'") from exc

from ._mq import (
    MessageQueue,
    MessageQueueInfo,
    SysVQueueAttribute,
    ftok,
    list_message_queues,
    remove_message_queue,
)
from ._mq import connect_address as connect_address  # the scheme table's hooks
from ._mq import remove_address as remove_address
from ._shm import Semaphore, SharedMemory

__all__ = [
    "MessageQueue",
    "MessageQueueInfo",
    "Semaphore",
    "SharedMemory",
    "SysVQueueAttribute",
    "ftok",
    "list_message_queues",
    "remove_message_queue",
]
