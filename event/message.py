"""What a handler receives: one delivery, decoded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Message(Generic[T]):
    """One delivery as a handler sees it.

    ``routing_key`` is the event's own routing key, whichever path (delay, retry, requeue) the message
    took; ``body`` is the decoded JSON; ``raw`` the bytes as received. ``attempt`` is 1 on the first
    delivery and counts earlier failures after that; ``redelivered`` is the broker's flag, set when a
    previous delivery of this message was never acknowledged (a crash or a lost connection).
    """

    __slots__ = (
        "attempt",
        "body",
        "delivery_routing_key",
        "exchange",
        "headers",
        "message_id",
        "queue",
        "raw",
        "redelivered",
        "routing_key",
        "timestamp",
    )

    def __init__(
        self,
        *,
        routing_key: str,
        body: T,
        raw: bytes,
        headers: dict[str, Any],
        message_id: str | None,
        timestamp: datetime | None,
        attempt: int,
        redelivered: bool,
        queue: str,
        delivery_routing_key: str,
        exchange: str,
    ) -> None:
        self.routing_key = routing_key
        self.body = body
        self.raw = raw
        self.headers = headers
        self.message_id = message_id
        self.timestamp = timestamp
        self.attempt = attempt
        self.redelivered = redelivered
        self.queue = queue
        self.delivery_routing_key = delivery_routing_key
        self.exchange = exchange

    def __repr__(self) -> str:
        return (
            f"Message(routing_key={self.routing_key!r}, message_id={self.message_id!r}, "
            f"attempt={self.attempt}, queue={self.queue!r})"
        )


class Context:
    """The default per-message context: an empty object that middleware may hang attributes on.

    Any class that can be called without arguments serves as a consumer's ``context``.
    """

    def __repr__(self) -> str:
        return f"Context({vars(self)!r})"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message just stored in the dead queue, as an ``on_dead`` callback is told of it."""

    message_id: str | None
    routing_key: str
    queue: str
    dead_queue: str
    error: str
    attempt: int
