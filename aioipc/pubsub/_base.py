"""What every publisher and subscription is, whatever carries the messages."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, Literal, Self

import anyio.abc

__all__ = ["POLICIES", "Policy", "Publisher", "Subscription", "check_policy"]

Policy = Literal["drop_oldest", "disconnect", "block"]
POLICIES: tuple[Policy, ...] = ("drop_oldest", "disconnect", "block")


def check_policy(policy: object) -> Policy:
    """Return ``policy`` if it is one of :data:`POLICIES`.

    Raises:
        ValueError: it is not.
    """
    for known in POLICIES:
        if policy == known:
            return known
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}; not {policy!r}")


class Subscription(anyio.abc.ObjectReceiveStream[tuple[str, bytes]]):
    """Messages ``(subject, payload)`` on the subjects subscribed to.

    ``async for subject, payload in sub`` ends when the publisher closed
    normally; a publisher or server that died raises.

    Attributes:
        patterns: the subject patterns subscribed to.
        dropped: messages dropped for this subscriber so far (it read too slowly).
    """

    patterns: tuple[str, ...]
    dropped: int

    async def send_eof(self) -> None:
        raise NotImplementedError("a subscription only receives")

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


class Publisher(abc.ABC):
    """Publishes ``(subject, payload)`` messages to whoever subscribed to a matching pattern.

    ``async with`` closes it at the end of the block.
    """

    address: str

    @abc.abstractmethod
    async def publish(self, subject: str, payload: bytes | bytearray | memoryview) -> None:
        """Send ``payload`` to every subscriber whose patterns match ``subject``."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the publisher; idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
