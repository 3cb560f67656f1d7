"""The operator's side of the dead queue: list what is there, send it back, or throw it away.

These work beside running workers: listing takes messages and hands them straight back, requeueing
publishes a copy to the queue a message failed in (confirmed) before removing it from the dead queue.
"""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from event import driver, wire
from event.config import DEFAULT_EXCHANGE, DEFAULT_PUBLISH_TIMEOUT_S, redact_url, resolve_url
from event.connect import Channel, Connection, Connector, close_quietly, connect, open_channel
from event.errors import ConfigurationError, EventError
from event.sending import Sender, copy_properties

PREVIEW_BYTES = 120


@dataclass(frozen=True, slots=True)
class DeadMessage:
    """One message of the dead queue, as an operator sees it."""

    message_id: str | None
    routing_key: str
    queue: str | None
    error: str | None
    failed_at: datetime | None
    attempts: int
    body: bytes
    headers: dict[str, Any] = field(repr=False)

    @property
    def preview(self) -> str:
        """The start of the body, as text."""
        text = self.body[:PREVIEW_BYTES].decode(errors="replace")
        return text + ("..." if len(self.body) > PREVIEW_BYTES else "")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``event dead list --json``)."""
        return {
            "message_id": self.message_id,
            "routing_key": self.routing_key,
            "queue": self.queue,
            "error": self.error,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "attempts": self.attempts,
            "body_preview": self.preview,
        }

    @classmethod
    def from_delivery(cls, delivered: driver.Delivery) -> DeadMessage:
        """Read what the dispatcher wrote into the dead copy's headers."""
        props = delivered.properties
        headers: dict[str, Any] = dict(props.headers or {})
        failed_at_ms = headers.get(wire.H_FAILED_AT)
        retries = headers.get(wire.H_RETRIES)
        return cls(
            message_id=props.message_id,
            routing_key=_text(headers.get(wire.H_ROUTING_KEY)) or delivered.routing_key or "",
            queue=_text(headers.get(wire.H_QUEUE)),
            error=_text(headers.get(wire.H_ERROR)),
            failed_at=datetime.fromtimestamp(failed_at_ms / 1000, tz=UTC)
            if isinstance(failed_at_ms, int)
            else None,
            attempts=(retries + 1) if isinstance(retries, int) else 1,
            body=delivered.body,
            headers=headers,
        )


@dataclass(frozen=True, slots=True)
class RequeueReport:
    """What a requeue did: message ids sent back, and those left in the dead queue with the reason."""

    requeued: list[str | None]
    left: list[tuple[str | None, str]]


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


class DeadQueue:
    """The dead queue of one namespace and exchange: ``list``, ``requeue`` and ``purge``.

    ::

        async with DeadQueue(namespace="myapp") as dead:
            for message in await dead.list(limit=20):
                print(message.routing_key, message.error)
            await dead.requeue(routing_key="app.send_email")
    """

    def __init__(
        self, url: str | None = None, *, namespace: str = "", exchange: str = DEFAULT_EXCHANGE
    ) -> None:
        self.url = resolve_url(url)
        self.name = wire.dead_queue_name(namespace, exchange)
        self._connection: Connection | None = None
        self.connector: Connector = connect

    async def __aenter__(self) -> Self:
        self._connection = await self.connector(self.url, name="event dead-queue tool")
        try:
            await self.count()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        connection, self._connection = self._connection, None
        await close_quietly(connection)

    async def _channel(self, *, confirms: bool) -> Channel:
        if self._connection is None or self._connection.is_closed:
            raise EventError(f"the dead queue tool for {self.name!r} is not connected: use `async with`")
        return await open_channel(self._connection, confirms=confirms)

    async def count(self) -> int:
        """How many messages wait in the dead queue."""
        channel = await self._channel(confirms=False)
        try:
            declared = await channel.queue_declare(self.name, passive=True)
        except driver.NotFound as exc:
            raise ConfigurationError(
                f"there is no dead queue {self.name!r} at {redact_url(self.url)}: check --namespace and "
                f"--exchange (a pool declares it when it starts)"
            ) from exc
        finally:
            await close_quietly(channel)
        return declared.message_count

    async def list(self, limit: int = 20) -> list[DeadMessage]:
        """Up to ``limit`` messages from the head of the dead queue, which stay in it."""
        channel = await self._channel(confirms=False)
        found: list[DeadMessage] = []
        try:
            last_tag = 0
            for _ in range(limit):
                got = await channel.basic_get(self.name, no_ack=False)
                if got is None:
                    break
                last_tag = got.delivery_tag
                found.append(DeadMessage.from_delivery(got))
            if last_tag:
                channel.basic_nack(last_tag, multiple=True, requeue=True)
        finally:
            await close_quietly(channel)  # anything still unacked goes back to the queue
        return found

    async def read_all(self, *, idle_s: float = 1.0, settle_s: float = 0.2) -> builtins.list[DeadMessage]:
        """Every message of the dead queue, oldest first; they stay in it.

        Read by a consumer without a prefetch limit and handed back at once: thousands a second where
        :meth:`list`'s one ``basic.get`` per message manages hundreds. Each message read is redelivered
        once (RabbitMQ counts it). Reads on past the count found at the start while messages keep coming
        (messages handed back by another client just before may not be counted yet), and stops once
        none came for ``idle_s`` (``settle_s`` past the count).
        """
        expected = await self.count()
        if expected == 0:
            return []
        channel = await self._channel(confirms=False)
        got: list[driver.Delivery] = []
        arrived = asyncio.Event()

        def on_delivery(delivery: driver.Delivery) -> None:
            got.append(delivery)
            arrived.set()

        tag = f"event.dead.{uuid.uuid4().hex}"
        try:
            await channel.basic_qos(0)  # no limit: a prefetch count tops out at 65,535, the queue at more
            await channel.basic_consume(self.name, on_delivery, consumer_tag=tag)
            while True:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), settle_s if len(got) >= expected else idle_s)
                except TimeoutError:
                    break
            await channel.basic_cancel(tag)  # every delivery sent before Cancel-Ok is in `got` now
            if got:
                channel.basic_nack(got[-1].delivery_tag, multiple=True, requeue=True)
        finally:
            await close_quietly(channel)  # anything still unacked goes back to the queue
        return [DeadMessage.from_delivery(d) for d in got]

    async def requeue(
        self,
        *,
        routing_key: str | None = None,
        message_id: str | None = None,
        everything: bool = False,
        where: Callable[[DeadMessage], bool] | None = None,
    ) -> RequeueReport:
        """Send matching messages back to the queue each failed in, retry count reset (spec section 7).

        Select with a topic ``routing_key`` pattern, a ``message_id``, both, a predicate ``where``
        (with the others, all must hold), or ``everything=True``. A message is removed from the dead
        queue only once the broker confirmed its copy.
        """
        if routing_key is None and message_id is None and where is None and not everything:
            raise ConfigurationError(
                "say which dead messages to requeue: a routing key pattern, a message id, or all"
            )
        if routing_key is not None:
            wire.validate_routing_key(routing_key, pattern=True)
        total = await self.count()
        reader = await self._channel(confirms=False)
        assert self._connection is not None  # _channel said so
        writer = Sender.over(self._connection, timeout=DEFAULT_PUBLISH_TIMEOUT_S)
        report = RequeueReport([], [])
        kept: list[int] = []
        try:
            # Read at most what was there at the start: messages put back below must not be read again.
            for _ in range(total):
                got = await reader.basic_get(self.name, no_ack=False)
                if got is None:
                    break
                tag = got.delivery_tag
                dead = DeadMessage.from_delivery(got)
                if not _selected(dead, routing_key, message_id, everything) or (
                    where is not None and not where(dead)
                ):
                    kept.append(tag)
                    continue
                if not dead.queue:
                    kept.append(tag)
                    report.left.append((dead.message_id, "no event-queue header: unknown origin"))
                    continue
                props = copy_properties(
                    got.properties, wire.requeue_headers(got.properties.headers or {}), None
                )
                try:
                    await writer.send("", dead.queue, dead.body, props, mandatory=True)
                except EventError as exc:  # the writer opens another channel if this one closed
                    kept.append(tag)
                    report.left.append((dead.message_id, str(exc)))
                    continue
                reader.basic_ack(tag)
                report.requeued.append(dead.message_id)
            _hand_back(reader, kept)
        finally:
            await writer.close()
            await close_quietly(reader)
        return report

    async def discard(self, message_id: str) -> int:
        """Delete the dead messages with ``message_id`` (the rest stay); returns how many were deleted."""
        return await self.discard_where(lambda dead: dead.message_id == message_id)

    async def discard_where(self, where: Callable[[DeadMessage], bool]) -> int:
        """Delete the dead messages ``where`` accepts (the rest stay); returns how many were deleted."""
        total = await self.count()
        channel = await self._channel(confirms=False)
        deleted = 0
        kept: list[int] = []
        try:
            for _ in range(total):  # at most what was there: those put back must not be read again
                got = await channel.basic_get(self.name, no_ack=False)
                if got is None:
                    break
                if where(DeadMessage.from_delivery(got)):
                    channel.basic_ack(got.delivery_tag)
                    deleted += 1
                else:
                    kept.append(got.delivery_tag)
            _hand_back(channel, kept)
        finally:
            await close_quietly(channel)  # anything still unacked goes back to the queue
        return deleted

    async def purge(self) -> int:
        """Delete every message of the dead queue; returns how many there were."""
        channel = await self._channel(confirms=False)
        try:
            return await channel.queue_purge(self.name)
        finally:
            await close_quietly(channel)


def _hand_back(channel: Channel, kept: list[int]) -> None:
    # Every delivery not kept was acked already, so one nack with multiple=True returns exactly the kept
    # ones: the broker requeues them in one go, where one nack each took it seconds per 10,000.
    if kept:
        channel.basic_nack(kept[-1], multiple=True, requeue=True)


def _selected(dead: DeadMessage, routing_key: str | None, message_id: str | None, everything: bool) -> bool:
    if routing_key is None and message_id is None:
        return True  # everything, or only the predicate selects
    if routing_key is not None and not wire.topic_matches(routing_key, dead.routing_key):
        return False
    return message_id is None or dead.message_id == message_id
