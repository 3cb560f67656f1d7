"""Publishing with publisher confirms: the Publisher users hold, and the confirmed send the pool reuses."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import orjson
from aiormq import exceptions as amqp_errors
from aiormq import spec

from event import topology, wire
from event.config import (
    DEFAULT_EXCHANGE,
    DEFAULT_PUBLISH_TIMEOUT_S,
    check_name,
    check_seconds,
    redact_url,
    resolve_url,
)
from event.connection import Channel, Connection, close_quietly, connect, open_channel
from event.errors import ConnectionFailed, PublishError, PublishNacked, PublishTimeout, Unroutable


def encode(routing_key: str, payload: Any) -> bytes:
    """``payload`` as JSON bytes; a :class:`TypeError` naming the routing key when it cannot be."""
    try:
        return orjson.dumps(payload)
    except TypeError as exc:
        raise TypeError(f"payload for {routing_key!r} cannot be serialised to JSON: {exc}") from exc


def properties(
    *, message_id: str | None = None, headers: Mapping[str, Any] | None = None, expiration: str | None = None
) -> spec.Basic.Properties:
    """Hutch's message properties (spec section 3): JSON, persistent, a UUID, a whole-second timestamp."""
    return spec.Basic.Properties(
        content_type=wire.CONTENT_TYPE,
        delivery_mode=wire.PERSISTENT,
        message_id=message_id or str(uuid.uuid4()),
        timestamp=datetime.fromtimestamp(int(time.time()), tz=UTC),
        headers=dict(headers) if headers else None,
        expiration=expiration,
    )


async def send(
    channel: Channel,
    *,
    exchange: str,
    routing_key: str,
    body: bytes,
    props: spec.Basic.Properties,
    mandatory: bool = False,
    timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
) -> None:
    """Publish one message and wait for the broker's confirm, turning every failure into a PublishError."""
    where = f"exchange {exchange!r}, routing key {routing_key!r}"
    try:
        result = await channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=props,
            mandatory=mandatory,
            timeout=timeout,
        )
    except amqp_errors.PublishError as exc:
        raise Unroutable(f"message to {where} matched no queue and was returned (mandatory=True)") from exc
    except amqp_errors.DeliveryError as exc:
        raise PublishNacked(f"the broker nacked the message to {where}: it was not stored") from exc
    except TimeoutError as exc:
        raise PublishTimeout(f"no confirm for the message to {where} within {timeout:g} s") from exc
    except (
        amqp_errors.AMQPError,
        amqp_errors.ChannelInvalidStateError,
        ConnectionError,
        RuntimeError,
    ) as exc:
        raise ConnectionFailed(
            f"could not publish to {where}: the connection or channel is closed ({exc})"
        ) from exc
    if result is not None and not isinstance(result, spec.Basic.Ack):
        raise PublishNacked(f"the broker answered {type(result).__name__} for the message to {where}")


class Publisher:
    """Publishes events to the exchange, waiting for the broker's confirm of each.

    Use it as an async context manager::

        async with Publisher(namespace="myapp") as publisher:
            await publisher.publish("app.send_email", {"to": "a@b.c"})

    A publish that returned was confirmed by the broker; a nack, an unroutable ``mandatory`` message,
    a timeout or a closed connection raises a :class:`event.errors.PublishError` or
    :class:`event.errors.ConnectionFailed`. Concurrent ``publish`` calls share the channel and keep
    their confirms in flight together.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "",
        exchange: str = DEFAULT_EXCHANGE,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
        connection_name: str = "event publisher",
    ) -> None:
        self.url = resolve_url(url)
        self.namespace = namespace
        self.exchange = check_name("exchange", exchange)
        self.timeout = check_seconds("publish timeout", timeout, allow_zero=False)
        self._connection_name = connection_name
        self._connection: Connection | None = None
        self._channel: Channel | None = None

    def __repr__(self) -> str:
        url = redact_url(self.url)
        return f"Publisher(url={url!r}, namespace={self.namespace!r}, exchange={self.exchange!r})"

    async def connect(self) -> None:
        """Connect, open a confirming channel and declare the exchange (idempotent when it matches)."""
        if self._channel is not None and not self._channel.is_closed:
            return
        self._connection = await connect(self.url, name=self._connection_name)
        try:
            self._channel = await open_channel(self._connection, confirms=True)
            await topology.declare_exchange(self._channel, self.exchange)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the channel and the connection."""
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

    def _open_channel(self) -> Channel:
        channel = self._channel
        if channel is None:
            raise ConnectionFailed(f"{self!r} is not connected: use `async with` or call connect() first")
        if channel.is_closed:
            raise ConnectionFailed(f"{self!r} lost its connection to RabbitMQ at {redact_url(self.url)}")
        return channel

    async def publish(
        self,
        routing_key: str,
        payload: Any,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish ``payload`` as JSON with ``routing_key`` and wait for the broker's confirm.

        With ``mandatory=True`` a message that no queue is bound to receive raises :class:`Unroutable`
        instead of being dropped by the broker.
        """
        wire.validate_routing_key(routing_key, pattern=False)
        body = encode(routing_key, payload)
        await self.publish_raw(
            routing_key, body, properties(message_id=message_id, headers=headers), mandatory=mandatory
        )

    async def publish_raw(
        self, routing_key: str, body: bytes, props: spec.Basic.Properties, *, mandatory: bool = False
    ) -> None:
        """Publish bytes with ready-made properties to the main exchange (for tools and bridges)."""
        await send(
            self._open_channel(),
            exchange=self.exchange,
            routing_key=routing_key,
            body=body,
            props=props,
            mandatory=mandatory,
            timeout=self.timeout,
        )


__all__ = ["Publisher", "PublishError", "encode", "properties", "send"]
