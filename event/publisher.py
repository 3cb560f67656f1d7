"""The Publisher users hold: events to the exchange, now, after a delay or at a time, confirmed.

Its publishes go through :class:`event.sending.Sender`, the one sending layer (confirms, nacks and
re-sends); the Publisher adds the connection it reconnects, the delay queues it declares, and the rules
of a payload (JSON, a size limit, delays).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson

from event import driver, protobuf, topology, wire
from event.config import (
    DEFAULT_EXCHANGE,
    DEFAULT_PUBLISH_TIMEOUT_S,
    check_count,
    check_name,
    check_queue_type,
    check_seconds,
    redact_url,
    resolve_url,
)
from event.connect import (
    Connection,
    Connector,
    close_quietly,
    connect,
    connected_url,
    open_channel,
)
from event.contracts import Contract, Producer
from event.errors import ConfigurationError, ConnectionFailed, PublishError, TopologyMismatch
from event.metrics import PublishStats
from event.sending import Sender, copy_properties, properties

log = logging.getLogger(__name__)

P = TypeVar("P")

# RabbitMQ 4.x refuses a message whose body is larger than its max_message_size, 16 MiB unless configured,
# and closes the channel for it: every publish in flight on that channel would fail with it.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


def encode(routing_key: str, payload: Any) -> bytes:
    """``payload`` as JSON bytes; a :class:`TypeError` naming the routing key when it cannot be."""
    try:
        return orjson.dumps(payload, default=_model_dump)
    except TypeError as exc:
        raise TypeError(f"payload for {routing_key!r} cannot be serialised to JSON: {exc}") from exc


def encode_payload(routing_key: str, payload: Any) -> tuple[bytes, str]:
    """``payload``'s body and content type: a protobuf message in its binary form (see
    :mod:`event.protobuf`), anything else as JSON (:func:`encode`)."""
    if type(payload) is not dict and protobuf.is_message(payload):  # a dict, the common case, at once
        return protobuf.encode(routing_key, payload), protobuf.CONTENT_TYPE
    return encode(routing_key, payload), wire.CONTENT_TYPE


def _model_dump(value: Any) -> Any:
    # orjson writes dataclasses and TypedDicts itself; pydantic models say how to dump themselves.
    dump = getattr(value, "model_dump", None)
    if dump is None:
        raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
    return dump(mode="json")


def delay_seconds(delay: float | timedelta) -> float:
    """``delay`` in seconds; a :class:`ValueError` naming ``delay`` when negative, NaN or infinite."""
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise TypeError(f"delay must be seconds (int or float) or a timedelta, not {type(delay).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"delay must be a finite number of seconds, at least 0, not {delay!r}")
    if seconds > wire.MAX_DELAY_S:
        raise ValueError(f"delay {delay!r} is beyond the horizon of {wire.MAX_DELAY_S // 86_400} days")
    return seconds


def check_priority(priority: int) -> int:
    """``priority`` if it fits the AMQP priority property (an octet, 0-255), else :class:`ValueError`."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255:
        raise ValueError(f"priority must be a whole number from 0 to 255, not {priority!r}")
    return priority


def seconds_until(when: datetime, now: float) -> float:
    """Seconds from ``now`` (epoch seconds) until the aware datetime ``when``; may be negative."""
    if not isinstance(when, datetime):
        raise TypeError(f"when must be a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"when must be an aware datetime (with a time zone), not the naive {when.isoformat()}"
        )
    return when.timestamp() - now


class Publisher:
    """Publishes events to the exchange, waiting for the broker's confirm of each.

    Use it as an async context manager::

        async with Publisher(namespace="myapp") as publisher:
            await publisher.publish("app.send_email", {"to": "a@b.c"})

    A publish that returned was confirmed by the broker; a nack, an unroutable ``mandatory`` message,
    a timeout or a closed connection raises a :class:`event.errors.PublishError` or
    :class:`event.errors.ConnectionFailed`. Concurrent ``publish`` calls share the channel and keep
    their confirms in flight together.

    When the connection dies, every publish still waiting for its confirm is sent again once the
    publisher has reconnected (to any node of the list): at least once, so a consumer may see a
    duplicate (counted in ``stats.resent``), never a loss. Each publish is bounded: it raises
    :class:`ConnectionFailed` when no connection came back within ``reconnect_timeout``, and
    :class:`PublishTimeout` when a confirm took longer than ``timeout``.

    The delay queues are declared on a channel of their own, and one the broker refuses for now (its
    node is down) is logged and declared again before the next ``publish_in`` that needs it: plain
    publishes never depend on them. A delay queue that exists with other arguments fails
    :meth:`connect` with :class:`event.errors.TopologyMismatch`.

    A body larger than ``max_body_bytes`` (default 16 MiB, RabbitMQ 4.x's default ``max_message_size``;
    0: no check) raises :class:`event.errors.PublishError` before anything is sent. Raise it together with
    the broker's ``max_message_size``.
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        namespace: str = "",
        exchange: str = DEFAULT_EXCHANGE,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
        connection_name: str = "event publisher",
        clock: Callable[[], float] = time.time,
        reconnect_timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
        queue_type: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.url = resolve_url(url)
        self.queue_type = check_queue_type(queue_type)
        self.namespace = namespace
        self.exchange = check_name("exchange", exchange)
        self.timeout = check_seconds("publish timeout", timeout, allow_zero=False)
        self._connection_name = connection_name
        self.clock = clock  # epoch seconds; event.testing.TestBroker swaps in its virtual clock
        self.stats = PublishStats()  # see event.metrics.publish_families to export them
        self._connection: Connection | None = None
        self._wanted = False  # connected by the user, and not closed since: reconnect when lost
        self._reconnecting = asyncio.Lock()
        self._undeclared: set[str] = set()  # delay queues the broker refused to declare for now
        self.reconnect_timeout = check_seconds("reconnect_timeout", reconnect_timeout)
        self.connector: Connector = connect  # event.testing.TestBroker swaps in its own
        self.max_body_bytes = check_count("max_body_bytes", max_body_bytes)
        self._sender = Sender(
            self._live_connection,
            timeout=self.timeout,
            resend_within=self.reconnect_timeout,
            stats=self.stats,
        )

    def __repr__(self) -> str:
        url = redact_url(self.url)
        return f"Publisher(url={url!r}, namespace={self.namespace!r}, exchange={self.exchange!r})"

    async def connect(self) -> None:
        """Connect, open a confirming channel and declare the exchange (idempotent when it matches).

        Afterwards the publisher reconnects by itself when the connection drops (within
        ``reconnect_timeout`` of a publish that needs it), until :meth:`close`.
        """
        if self._connection is not None and not self._connection.is_closed:
            return
        await self._open(first=True)
        try:
            await self._sender.open()
        except BaseException:
            await self.close()
            raise
        self._wanted = True

    async def _open(self, *, first: bool = False) -> None:
        await close_quietly(self._connection)
        self._connection = await self.connector(self.url, name=self._connection_name)
        try:
            plan = topology.publisher_plan(self.namespace, self.exchange, queue_type=self.queue_type)
            await self._declare(self._connection, plan, first)
        except BaseException:
            connection, self._connection = self._connection, None
            await close_quietly(connection)
            raise

    async def _declare(self, connection: Connection, plan: topology.Plan, first: bool) -> None:
        # On a channel of its own: a refused declare closes its channel, and the publish channel may
        # carry other callers' confirms by then.
        refused = await topology.declare_each(lambda: open_channel(connection, confirms=False), plan)
        exchanges = {exchange.name for exchange in plan.exchanges}
        for name, failure in list(refused.items()):
            if self._takes_as_declared(name, failure):
                del refused[name]  # the pools of the namespace chose its type: publish into it as it is
                continue
            if name in exchanges or (first and isinstance(failure, ConfigurationError)):
                raise failure  # without its exchange nothing can be published; a mismatch is a bug
            log.warning(
                "publisher at %s: %s; declaring it again before a publish that needs it",
                connected_url(connection),
                failure,
            )
        self._undeclared = (self._undeclared - {queue.name for queue in plan.queues}) | set(refused)

    def _takes_as_declared(self, name: str, failure: Exception) -> bool:
        # A publisher given no queue_type does not insist on one: a park queue that a pool of the
        # namespace declared (quorum, in a cluster) is as good as its own.
        return (
            self.queue_type is None
            and isinstance(failure, TopologyMismatch)
            and wire.is_park_queue_name(name, self.exchange)
        )

    async def _declare_if_refused(self, queue: str) -> None:
        # A delay queue the broker refused at connect (its node was down): try again before using it.
        # Still refused, the publish goes ahead and its mandatory flag reports what the broker does.
        connection = self._connection
        if queue not in self._undeclared or connection is None or connection.is_closed:
            return
        plan = topology.publisher_plan(self.namespace, self.exchange, queue_type=self.queue_type)
        wanted = [q for q in plan.queues if q.name == queue]
        await self._declare(connection, topology.Plan((), tuple(wanted)), False)

    async def close(self) -> None:
        """Close the channel and the connection."""
        self._wanted = False
        connection, self._connection = self._connection, None
        await self._sender.close()
        await close_quietly(connection)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def to(self, contract: Contract[P]) -> Producer[P]:
        """A handle publishing only ``contract``'s payloads: ``publisher.to(SEND_EMAIL).publish(...)``."""
        return Producer(self, contract)

    async def publish(
        self,
        routing_key: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        mandatory: bool = False,
        priority: int | None = None,
    ) -> None:
        """Publish ``payload`` with ``routing_key`` and wait for the broker's confirm.

        The body is JSON, or the binary form of a protobuf message (see :mod:`event.protobuf`).

        With ``mandatory=True`` a message that no queue is bound to receive raises :class:`Unroutable`
        instead of being dropped by the broker.

        ``priority`` (0-255) sets the message's priority property: a consumer declared with
        ``max_priority`` takes higher ones first (see docs/priorities.md); other queues ignore it.
        Retry and dead copies keep it.
        """
        wire.validate_routing_key(routing_key, pattern=False)
        body, content_type = encode_payload(routing_key, payload)
        props = properties(
            message_id=message_id, headers=headers, now=self.clock(), content_type=content_type
        )
        if priority is not None:
            props.priority = check_priority(priority)
        await self._send(  # not through publish_raw: a coroutine less to pass through, per publish
            self.exchange, routing_key, body, props, mandatory=mandatory
        )

    async def publish_in(
        self,
        delay: float | timedelta,
        routing_key: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Publish ``payload`` to be delivered after ``delay`` (seconds or a ``timedelta``), never earlier.

        The message waits in event's park queue of the smallest level at least ``delay`` (so a
        7 s delay is delivered after 10 s); 0 publishes at once. Delays over 3 hours are parked again by
        the consumer until due. A negative, NaN or infinite delay raises :class:`ValueError`.
        ``priority`` as for :meth:`publish`: it travels through the park queues with the message.
        """
        await self._publish_delayed(
            delay_seconds(delay), routing_key, payload, headers, message_id, priority=priority
        )

    async def publish_at(
        self,
        when: datetime,
        routing_key: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Publish ``payload`` for delivery at ``when`` (an aware datetime) or later; a past one: now.

        ``priority`` as for :meth:`publish`."""
        seconds = seconds_until(when, self.clock())
        if seconds > wire.MAX_DELAY_S:
            raise ValueError(
                f"when {when.isoformat()} is beyond the horizon of {wire.MAX_DELAY_S // 86_400} days from now"
            )
        due_at_ms = math.ceil(when.timestamp() * 1000)  # exactly the time asked for, not now + a float
        await self._publish_delayed(
            max(seconds, 0.0), routing_key, payload, headers, message_id, due_at_ms, priority=priority
        )

    async def _publish_delayed(
        self,
        seconds: float,
        routing_key: str,
        payload: Any,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        due_at_ms: int | None = None,
        *,
        priority: int | None = None,
    ) -> None:
        if priority is not None:
            check_priority(priority)  # before anything is sent, also for a delay that rounds to now
        if seconds <= 0:
            await self.publish(
                routing_key, payload, headers=headers, message_id=message_id, priority=priority
            )
            return
        wire.validate_routing_key(routing_key, pattern=False)
        body, content_type = encode_payload(routing_key, payload)
        level, planned_due_ms = wire.delay_plan(seconds, math.ceil(self.clock() * 1000))
        if planned_due_ms is None:
            due_at_ms = None  # a level covers it: no re-park needed
        elif due_at_ms is None:
            due_at_ms = planned_due_ms
        queue = wire.park_queue_name(self.namespace, self.exchange, level)
        parked = wire.delayed_headers(headers, routing_key, due_at_ms=due_at_ms)
        entry = wire.park_in(self.namespace, self.exchange, level, parked)
        props = properties(
            message_id=message_id,
            headers=parked,
            expiration=str(level * 1000),
            now=self.clock(),
            content_type=content_type,
            priority=priority,
        )
        # Straight into our own park queue (one copy, whatever other namespaces share the exchange),
        # with its own routing key, which it keeps when due: see wire.park_entry_exchange_name.
        # Mandatory, so a missing queue raises instead of dropping the message.
        if queue in self._undeclared:
            await self._declare_if_refused(queue)
        await self._send(
            entry,
            routing_key,
            body,
            props,
            mandatory=True,
        )

    async def publish_raw(
        self, routing_key: str, body: bytes, props: driver.Properties, *, mandatory: bool = False
    ) -> None:
        """Publish bytes with ready-made properties to the main exchange (for tools and bridges)."""
        await self._send(self.exchange, routing_key, body, props, mandatory=mandatory)

    def _send(
        self, exchange: str, routing_key: str, body: bytes, props: driver.Properties, *, mandatory: bool
    ) -> Awaitable[None]:
        # Not a coroutine of its own: the sender's, checked first, for the caller to await at once.
        if self.max_body_bytes and len(body) > self.max_body_bytes:
            raise PublishError(
                f"the message to exchange {exchange!r}, routing key {routing_key!r} has a body of "
                f"{len(body)} bytes, over the limit of {self.max_body_bytes} bytes (max_body_bytes; "
                f"RabbitMQ 4.x refuses bodies over its max_message_size, 16 MiB by default): not sent"
            )
        return self._sender.send(exchange, routing_key, body, props, mandatory=mandatory)

    async def _live_connection(self, deadline: float) -> Connection:
        # The sender's source: the connection, reconnected (to any node of the list) when it was lost,
        # by the deadline of the publish that needs it.
        connection = self._connection
        if connection is not None and not connection.is_closed:
            return connection
        if not self._wanted:
            raise ConnectionFailed(f"{self!r} is not connected: use `async with` or call connect() first")
        last: BaseException | None = None
        try:
            async with asyncio.timeout_at(deadline), self._reconnecting:
                pause = 0.2
                while self._connection is None or self._connection.is_closed:
                    if not self._wanted:
                        raise ConnectionFailed(f"{self!r} was closed")
                    try:
                        await self._open()
                    except ConnectionFailed as exc:
                        last = exc
                        log.warning("publisher reconnecting to %s: %s", redact_url(self.url), exc)
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, 2.0)
                return self._connection
        except TimeoutError:
            raise ConnectionFailed(
                f"{self!r} lost its connection to RabbitMQ and could not reconnect within "
                f"{self.reconnect_timeout:g} s: {last or 'another reconnect attempt was still under way'}"
            ) from last


__all__ = ["Publisher", "PublishError", "copy_properties", "encode", "properties"]
