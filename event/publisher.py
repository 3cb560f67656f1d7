"""Publishing with publisher confirms: the Publisher users hold, and the confirmed send the pool reuses."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson

from event import driver, protobuf, topology, tracing, wire
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
from event.connection import (
    Channel,
    Connection,
    Connector,
    broker_reason,
    close_quietly,
    connect,
    connected_url,
    open_channel,
)
from event.contracts import Contract, Producer
from event.errors import (
    ConfigurationError,
    ConnectionFailed,
    PublishError,
    PublishNacked,
    PublishTimeout,
    TopologyMismatch,
    Unroutable,
)
from event.metrics import PublishStats

log = logging.getLogger("event.publisher")

P = TypeVar("P")

NACK_PAUSES_S = (0.1, 0.5, 1.0, 2.0)  # before each re-send of a nacked publish on a fresh channel

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
    return seconds


def seconds_until(when: datetime, now: float) -> float:
    """Seconds from ``now`` (epoch seconds) until the aware datetime ``when``; may be negative."""
    if not isinstance(when, datetime):
        raise TypeError(f"when must be a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"when must be an aware datetime (with a time zone), not the naive {when.isoformat()}"
        )
    return when.timestamp() - now


def properties(
    *,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    expiration: str | None = None,
    now: float | None = None,
    content_type: str = wire.CONTENT_TYPE,
) -> driver.Properties:
    """Hutch's message properties (spec section 3): JSON (or ``content_type``), persistent, a UUID, a
    whole-second timestamp (of ``now``, epoch seconds, if given: the publisher's clock)."""
    return driver.Properties(
        content_type=content_type,
        delivery_mode=wire.PERSISTENT,
        message_id=message_id or str(uuid.uuid4()),
        timestamp=datetime.fromtimestamp(int(time.time() if now is None else now), tz=UTC),
        headers=dict(headers) if headers else None,
        expiration=expiration,
    )


def copy_properties(
    props: driver.Properties, headers: dict[str, Any], level: int | None
) -> driver.Properties:
    """The properties of a copy (retry, re-park, dead, requeue): the original's, persistent, new headers.

    ``level`` sets the per-message TTL of a delay queue; a dead copy has none, so it never expires early.
    """
    return driver.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        delivery_mode=wire.PERSISTENT,
        message_id=props.message_id or str(uuid.uuid4()),
        timestamp=props.timestamp,
        headers=headers,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        expiration=None if level is None else str(level * 1000),
        message_type=props.message_type,
        app_id=props.app_id,
    )


@tracing.traced_send  # a producer span and trace context in the headers, when opentelemetry is installed
async def send(
    channel: Channel,
    *,
    exchange: str,
    routing_key: str,
    body: bytes,
    props: driver.Properties,
    mandatory: bool = False,
    timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
    stats: PublishStats | None = None,
) -> None:
    """Publish one message and wait for the broker's confirm, turning every failure into a PublishError."""
    started = time.perf_counter()
    try:
        await _send(channel, exchange, routing_key, body, props, mandatory, timeout)
    except Exception as exc:
        if stats is not None:
            stats.failed(exchange, exc)
        raise
    if stats is not None:
        stats.ok(exchange, time.perf_counter() - started)


async def _send(
    channel: Channel,
    exchange: str,
    routing_key: str,
    body: bytes,
    props: driver.Properties,
    mandatory: bool,
    timeout: float,
) -> None:
    where = f"exchange {exchange!r}, routing key {routing_key!r}"
    try:
        async with asyncio.timeout(timeout):
            await channel.basic_publish(
                body, exchange=exchange, routing_key=routing_key, properties=props, mandatory=mandatory
            )
    except driver.Returned as exc:
        raise Unroutable(f"message to {where} matched no queue and was returned (mandatory=True)") from exc
    except driver.Nacked as exc:
        raise PublishNacked(f"the broker nacked the message to {where}: it was not stored") from exc
    except TimeoutError as exc:
        raise PublishTimeout(f"no confirm for the message to {where} within {timeout:g} s") from exc
    except (driver.AMQPError, ConnectionError) as exc:
        raise ConnectionFailed(
            f"could not publish to {where}: the connection or channel is closed ({broker_reason(exc)})"
        ) from exc


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
        self._channel: Channel | None = None
        self._wanted = False  # connected by the user, and not closed since: reconnect when lost
        self._reconnecting = asyncio.Lock()
        self._undeclared: set[str] = set()  # delay queues the broker refused to declare for now
        self.reconnect_timeout = check_seconds("reconnect_timeout", reconnect_timeout)
        self.connector: Connector = connect  # event.testing.TestBroker swaps in its own
        self.max_body_bytes = check_count("max_body_bytes", max_body_bytes)

    def __repr__(self) -> str:
        url = redact_url(self.url)
        return f"Publisher(url={url!r}, namespace={self.namespace!r}, exchange={self.exchange!r})"

    async def connect(self) -> None:
        """Connect, open a confirming channel and declare the exchange (idempotent when it matches).

        Afterwards the publisher reconnects by itself when the connection drops (within
        ``reconnect_timeout`` of a publish that needs it), until :meth:`close`.
        """
        if self._channel is not None and not self._channel.is_closed:
            return
        await self._open(first=True)
        self._wanted = True

    async def _open(self, *, first: bool = False) -> None:
        await close_quietly(self._connection)
        self._connection = await self.connector(self.url, name=self._connection_name)
        try:
            self._channel = await open_channel(self._connection, confirms=True)
            plan = topology.delay_plan(self.namespace, self.exchange, queue_type=self.queue_type)
            await self._declare(self._connection, plan, first)
        except BaseException:
            channel, connection = self._channel, self._connection
            self._channel = self._connection = None
            await close_quietly(channel)
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
        plan = topology.delay_plan(self.namespace, self.exchange, queue_type=self.queue_type)
        wanted = [q for q in plan.queues if q.name == queue]
        await self._declare(connection, topology.Plan((), tuple(wanted)), False)

    async def close(self) -> None:
        """Close the channel and the connection."""
        self._wanted = False
        channel, connection = self._channel, self._connection
        self._channel = self._connection = None
        await close_quietly(channel)
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
    ) -> None:
        """Publish ``payload`` with ``routing_key`` and wait for the broker's confirm.

        The body is JSON, or the binary form of a protobuf message (see :mod:`event.protobuf`).

        With ``mandatory=True`` a message that no queue is bound to receive raises :class:`Unroutable`
        instead of being dropped by the broker.
        """
        wire.validate_routing_key(routing_key, pattern=False)
        body, content_type = encode_payload(routing_key, payload)
        await self.publish_raw(
            routing_key,
            body,
            properties(message_id=message_id, headers=headers, now=self.clock(), content_type=content_type),
            mandatory=mandatory,
        )

    async def publish_in(
        self,
        delay: float | timedelta,
        routing_key: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish ``payload`` to be delivered after ``delay`` (seconds or a ``timedelta``), never earlier.

        The message waits in event's park queue of the smallest level at least ``delay`` (so a
        7 s delay is delivered after 10 s); 0 publishes at once. Delays over 3 hours are parked again by
        the consumer until due. A negative, NaN or infinite delay raises :class:`ValueError`.
        """
        await self._publish_delayed(delay_seconds(delay), routing_key, payload, headers, message_id)

    async def publish_at(
        self,
        when: datetime,
        routing_key: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish ``payload`` for delivery at ``when`` (an aware datetime) or later; a past one: now."""
        seconds = seconds_until(when, self.clock())
        due_at_ms = math.ceil(when.timestamp() * 1000)  # exactly the time asked for, not now + a float
        await self._publish_delayed(max(seconds, 0.0), routing_key, payload, headers, message_id, due_at_ms)

    async def _publish_delayed(
        self,
        seconds: float,
        routing_key: str,
        payload: Any,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        due_at_ms: int | None = None,
    ) -> None:
        if seconds <= 0:
            await self.publish(routing_key, payload, headers=headers, message_id=message_id)
            return
        wire.validate_routing_key(routing_key, pattern=False)
        body, content_type = encode_payload(routing_key, payload)
        level, planned_due_ms = wire.delay_plan(seconds, math.ceil(self.clock() * 1000))
        if planned_due_ms is None:
            due_at_ms = None  # a level covers it: no re-park needed
        elif due_at_ms is None:
            due_at_ms = planned_due_ms
        props = properties(
            message_id=message_id,
            headers=wire.delayed_headers(headers, routing_key, due_at_ms=due_at_ms),
            expiration=str(level * 1000),
            now=self.clock(),
            content_type=content_type,
        )
        # Straight into our own park queue (one copy, whatever other namespaces share the exchange),
        # through the delay exchange rather than the spec's default one: see wire.delay_exchange_name.
        # Mandatory, so a missing queue raises instead of dropping the message.
        queue = wire.park_queue_name(self.namespace, self.exchange, level)
        if queue in self._undeclared:
            await self._declare_if_refused(queue)
        await self._send(
            wire.delay_exchange_name(self.exchange),
            queue,
            body,
            props,
            mandatory=True,
        )

    async def publish_raw(
        self, routing_key: str, body: bytes, props: driver.Properties, *, mandatory: bool = False
    ) -> None:
        """Publish bytes with ready-made properties to the main exchange (for tools and bridges)."""
        await self._send(self.exchange, routing_key, body, props, mandatory=mandatory)

    async def _send(
        self, exchange: str, routing_key: str, body: bytes, props: driver.Properties, *, mandatory: bool
    ) -> None:
        if self.max_body_bytes and len(body) > self.max_body_bytes:
            raise PublishError(
                f"the message to exchange {exchange!r}, routing key {routing_key!r} has a body of "
                f"{len(body)} bytes, over the limit of {self.max_body_bytes} bytes (max_body_bytes; "
                f"RabbitMQ 4.x refuses bodies over its max_message_size, 16 MiB by default): not sent"
            )
        # A publish that returns was confirmed. One that the connection's loss interrupted was not, so it
        # is sent again once the publisher has reconnected (same message id: a consumer may see it twice,
        # never zero times), until reconnect_timeout runs out.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        again = False
        nacks = 0
        while True:
            channel = await self._ready_channel(deadline)
            if again:
                self.stats.resent += 1
            try:
                await send(
                    channel,
                    exchange=exchange,
                    routing_key=routing_key,
                    body=body,
                    props=props,
                    mandatory=mandatory,
                    timeout=self.timeout,
                    stats=self.stats,
                )
                return
            except ConnectionFailed:
                if not self._wanted or loop.time() >= deadline:
                    raise
                again = True
                await asyncio.sleep(0.1)
            except PublishNacked:
                # Not stored: after a node's death RabbitMQ 3.10 nacks everything a channel publishes to a
                # quorum queue still electing its leader, while a new channel is acked at once (seen on a
                # three-node cluster). A few tries on a fresh channel; a full queue nacks them all too.
                if nacks >= len(NACK_PAUSES_S) or not self._wanted or loop.time() >= deadline:
                    raise
                await asyncio.sleep(NACK_PAUSES_S[nacks])
                nacks += 1
                again = True
                await self._fresh_channel(channel)

    async def _fresh_channel(self, nacked: Channel) -> None:
        # Once, however many publishes the old channel nacked; those still in flight on it are re-sent.
        async with self._reconnecting:
            connection = self._connection
            if self._channel is not nacked or connection is None or connection.is_closed:
                return
            try:
                self._channel = await open_channel(connection, confirms=True)
            except ConnectionFailed:
                return  # the connection is going: the reconnect path takes over
        await close_quietly(nacked)

    async def _ready_channel(self, deadline: float) -> Channel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        if not self._wanted:
            raise ConnectionFailed(f"{self!r} is not connected: use `async with` or call connect() first")
        last: BaseException | None = None
        try:
            # The whole wait is bounded, including the wait for another caller's reconnect attempt.
            async with asyncio.timeout_at(deadline):
                async with self._reconnecting:
                    pause = 0.2
                    while self._channel is None or self._channel.is_closed:
                        try:
                            await self._open()
                        except ConnectionFailed as exc:
                            last = exc
                            log.warning("publisher reconnecting to %s: %s", redact_url(self.url), exc)
                            await asyncio.sleep(pause)
                            pause = min(pause * 2, 2.0)
                    return self._channel
        except TimeoutError:
            raise ConnectionFailed(
                f"{self!r} lost its connection to RabbitMQ and could not reconnect within "
                f"{self.reconnect_timeout:g} s: {last or 'another reconnect attempt was still under way'}"
            ) from last


__all__ = ["Publisher", "PublishError", "encode", "properties", "send"]
