"""event: process events over RabbitMQ, wire-compatible with Ruby's Hutch and hutch-schedule.

Everything a user imports is listed here::

    from event import WorkerPool, Publisher, Message, Context, Retry, Dead

    pool = WorkerPool(namespace="myapp", concurrency=200)

    @pool.consumer("app.send_email", max_concurrency=5, prefetch=30)
    async def send_email(ctx: Context, msg: Message) -> None:
        ...

    async with Publisher(namespace="myapp") as publisher:
        await publisher.publish("app.send_email", {"to": "a@b.c"})

A :class:`Contract` binds a routing key to a payload type once, for both sides (see docs/contracts.md)::

    SEND_EMAIL = Contract("app.send_email", SendEmail)

    @SEND_EMAIL.consumer(pool)
    async def send(ctx: Context, msg: Message[SendEmail]) -> None: ...

    await publisher.to(SEND_EMAIL).publish(SendEmail(to="a@b.c"))

The errors the library raises are in :mod:`event.errors`, all derived from :class:`EventError`.
"""

from event.contracts import Contract, Producer
from event.errors import (
    ConfigurationError,
    ConnectionFailed,
    DecodeError,
    EventError,
    PayloadError,
    PublishError,
    PublishNacked,
    PublishTimeout,
    RemoteError,
    ReplyError,
    ReplyTimeout,
    TopologyMismatch,
    Unroutable,
    ValidationError,
)
from event.idempotency import Idempotency, MemoryStore, RedisStore
from event.message import Context, DeadLetter, Message
from event.middleware import CallNext, Middleware
from event.pool import WorkerPool
from event.publisher import Publisher
from event.signals import BatchFailed, Dead, Retry

__version__ = "0.1.0"

__all__ = [
    "DeadLetter",
    "BatchFailed",
    "CallNext",
    "ConfigurationError",
    "ConnectionFailed",
    "Context",
    "Contract",
    "Dead",
    "DecodeError",
    "EventError",
    "Idempotency",
    "MemoryStore",
    "Message",
    "Middleware",
    "PayloadError",
    "Producer",
    "PublishError",
    "PublishNacked",
    "PublishTimeout",
    "Publisher",
    "RemoteError",
    "ReplyError",
    "ReplyTimeout",
    "RedisStore",
    "Retry",
    "TopologyMismatch",
    "Unroutable",
    "ValidationError",
    "WorkerPool",
]
