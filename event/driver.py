"""The driver seam: what `event` needs of an AMQP 0-9-1 connection, and nothing more.

Every part of `event` that talks to a broker (the pool, its consumers and dispatchers, the publisher,
cron, the dead-queue tools, the gateway) talks to these protocols. Two drivers implement them:
:mod:`event.amqp`, our own client on an ``asyncio.Protocol`` (the real broker), and
:class:`event.testing.TestBroker` (in memory). Neither reads the other's state.

Messages and their properties are pamqp's types (``pamqp.commands.Basic.Properties``): pamqp is the
reference encoding of AMQP 0-9-1, and both drivers encode through it.

Errors are this module's, whichever driver raised them, so that callers never import a driver to
catch one: :class:`ChannelClosed` and its per-reply-code subclasses when the broker closed a channel,
:class:`ConnectionClosed` when the connection went, :class:`ChannelInvalidState` for a channel used
after it closed, :class:`Returned` and :class:`Nacked` for a publish the broker did not store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pamqp.commands import Basic

Properties = Basic.Properties
Arguments = Mapping[str, Any]


class AMQPError(Exception):
    """Anything the driver reports about the broker or the connection."""


class ConnectionClosed(AMQPError):
    """The connection is gone: closed by the broker (``reply_code`` is its reason), by us, or lost."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(f"{reply_code} {reply_text}" if reply_code else reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text


class ChannelClosed(AMQPError):
    """The broker closed the channel: ``reply_text`` is its own words (``NOT_FOUND - no queue 'x' ...``).

    Raised by the call that provoked it and set on the channel's :attr:`Channel.closing`. Use
    :func:`channel_closed` to build one: it picks the subclass of the reply code."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text


class AccessRefused(ChannelClosed):
    """403 ACCESS_REFUSED."""


class NotFound(ChannelClosed):
    """404 NOT_FOUND: no such queue or exchange, or a classic queue whose node is down."""


class ResourceLocked(ChannelClosed):
    """405 RESOURCE_LOCKED: an exclusive queue of another connection."""


class PreconditionFailed(ChannelClosed):
    """406 PRECONDITION_FAILED: an inequivalent declare, an unknown delivery tag, a consumer timeout."""


_BY_CODE: dict[int, type[ChannelClosed]] = {
    403: AccessRefused,
    404: NotFound,
    405: ResourceLocked,
    406: PreconditionFailed,
}


def channel_closed(reply_code: int, reply_text: str) -> ChannelClosed:
    """The :class:`ChannelClosed` (subclass by reply code) for a broker's ``Channel.Close``."""
    return _BY_CODE.get(reply_code, ChannelClosed)(reply_code, reply_text)


class ChannelInvalidState(AMQPError):
    """A channel (or its connection) used after it closed."""


class Returned(AMQPError):
    """A ``mandatory`` publish matched no queue: the broker returned it (``Basic.Return``)."""

    def __init__(self, message: ReturnedMessage) -> None:
        super().__init__(f"{message.reply_code} {message.reply_text}")
        self.message = message


class Nacked(AMQPError):
    """The broker answered a publish with ``Basic.Nack``: it was not stored."""


@dataclass(slots=True)
class Delivery:
    """One message handed to a consumer (``Basic.Deliver``) or fetched (``Basic.GetOk``)."""

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: Properties
    body: bytes
    consumer_tag: str = ""  # empty for a basic_get
    message_count: int | None = None  # messages left in the queue, for a basic_get


@dataclass(slots=True)
class ReturnedMessage:
    """A message the broker returned (``Basic.Return``): unroutable with ``mandatory``."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    properties: Properties
    body: bytes


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What ``Queue.DeclareOk`` says of a queue."""

    queue: str
    message_count: int
    consumer_count: int


# A consumer's delivery callback. It is called in the driver's read loop, once per delivery and in
# delivery order, and must not block: it starts the work (eagerly or in a task) and returns.
OnDelivery = Callable[[Delivery], None]
# Told the consumer tag when the broker cancels a consumer (``Basic.Cancel``: queue deleted, leader moved).
OnCancel = Callable[[str], None]


class Channel(Protocol):
    """One AMQP channel. Methods that wait for the broker's answer are coroutines; settling a delivery
    is not (it is written with the next batch of outgoing frames and has no answer)."""

    @property
    def number(self) -> int: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def closing(self) -> asyncio.Future[None]:
        """Done when the channel closes: a :class:`ChannelClosed` if the broker closed it, a
        :class:`ConnectionClosed` if its connection went, ``None`` if we closed it."""
        ...

    async def close(self) -> None: ...

    async def basic_qos(self, prefetch_count: int) -> None: ...

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Arguments | None = None,
    ) -> None: ...

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None: ...

    async def exchange_bind(
        self, destination: str, source: str, routing_key: str = "", arguments: Arguments | None = None
    ) -> None: ...

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Arguments | None = None,
    ) -> QueueInfo: ...

    async def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: Arguments | None = None
    ) -> None: ...

    async def queue_unbind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: Arguments | None = None
    ) -> None: ...

    async def queue_delete(self, queue: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        """Delete ``queue``; returns how many messages it held."""
        ...

    async def queue_purge(self, queue: str) -> int:
        """Empty ``queue``; returns how many messages it held."""
        ...

    async def basic_consume(
        self,
        queue: str,
        on_delivery: OnDelivery,
        *,
        consumer_tag: str = "",
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Arguments | None = None,
        on_cancel: OnCancel | None = None,
    ) -> str:
        """Start consuming ``queue``; returns the consumer tag."""
        ...

    async def basic_cancel(self, consumer_tag: str) -> None: ...

    async def basic_get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        """One message of ``queue``, or ``None`` when it is empty."""
        ...

    def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None: ...

    def basic_nack(self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True) -> None: ...

    def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None: ...

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish one message. On a channel in confirm mode it returns once the broker confirmed it,
        and raises :class:`Nacked` or :class:`Returned` when it did not store it; while the broker blocks
        the connection (``Connection.Blocked``) it waits. Without confirms it returns once written.

        ``timeout`` (seconds) bounds the whole wait, a blocked connection's included: past it, about
        then, :class:`TimeoutError` (the message may still have been stored; a late confirm is ignored).
        One timer per channel checks the publishes' deadlines, rather than one per publish."""
        ...


class Connection(Protocol):
    """One AMQP connection to one node."""

    @property
    def is_closed(self) -> bool: ...

    @property
    def closing(self) -> asyncio.Future[None]:
        """Done when the connection closes: a :class:`ConnectionClosed` unless we closed it."""
        ...

    @property
    def node(self) -> str:
        """The URL of the node it reached, password hidden (for logs naming a node of a cluster)."""
        ...

    @property
    def server_properties(self) -> dict[str, Any]:
        """What the broker said of itself at ``Connection.Start`` (``product``, ``version``, ...)."""
        ...

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks publishing on this connection (``Connection.Blocked``)."""
        ...

    async def channel(self, *, confirms: bool = False) -> Channel:
        """A new channel; ``confirms`` puts it in confirm mode (``Confirm.Select``)."""
        ...

    async def close(self) -> None: ...


class Connector(Protocol):
    """How a pool, publisher or tool opens its connection: ``connector(url, name=...)``, ``name`` shown in
    the broker's connection list. :func:`event.connect.connect` (a URL or a comma-separated list of
    nodes, through :mod:`event.amqp`) is the one they use unless a test broker's ``connect`` stands in."""

    def __call__(self, url: str, *, name: str) -> Awaitable[Connection]: ...


__all__ = [
    "AMQPError",
    "AccessRefused",
    "Arguments",
    "Channel",
    "ChannelClosed",
    "ChannelInvalidState",
    "Connection",
    "ConnectionClosed",
    "Connector",
    "Delivery",
    "Nacked",
    "NotFound",
    "OnCancel",
    "OnDelivery",
    "PreconditionFailed",
    "Properties",
    "QueueInfo",
    "ResourceLocked",
    "Returned",
    "ReturnedMessage",
    "channel_closed",
]
