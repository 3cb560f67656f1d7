"""A faithful stand-in for a Ruby service running Hutch 1.0 with hutch-schedule 0.7 (what the interop tests
run beside event, since this machine has no Ruby).

It does on the wire exactly what hutch-schedule's source does (lib/hutch/schedule/core.rb,
lib/hutch/enqueue.rb, lib/hutch/error_handlers/max_retry.rb), through a raw AMQP channel as Bunny would:
- ``declare``: the topic exchange ``<exchange>.schedule`` (durable, no arguments) and, per level, the
  delay queue ``<namespace>:<exchange>_delay_queue_<N>s`` (30-day TTL, dead-lettering into ``<exchange>``)
  bound by ``<exchange>.schedule.<N>s``;
- ``enqueue_in``: publishes to the schedule exchange with routing key ``<exchange>.schedule.<N>s``,
  ``expiration`` = the level in ms and the caller's headers merged with ``CC: [routing key]``. Ruby's merge
  keeps a string ``"CC"`` key of the caller's beside its symbol ``:CC``, and RabbitMQ then routes by the
  caller's (seen with real Hutch): so a ``CC`` already in the headers wins here too;
- ``RubyConsumer``: Hutch's worker with ``MaxRetry``: on a failure it counts the ``x-death`` entries whose
  ``routing-keys`` meet the consumer's routing keys, re-enqueues the message with the headers it received
  while that count + 1 is at most ``attempts`` (after ``(attempt - 1) ** 4 + 2`` seconds), and then, as
  Hutch's default ``NackOnAllFailures`` does, nacks the delivery without requeue.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiormq import spec
from aiormq.abc import AbstractChannel, DeliveredMessage

from event import wire

THIRTY_DAYS_MS = 30 * 24 * 60 * 60 * 1000


async def declare(channel: AbstractChannel, namespace: str, exchange: str) -> list[str]:
    """What hutch-schedule declares for ``namespace``; returns the delay queues' names."""
    schedule = f"{exchange}.schedule"
    await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    # Core#declare_delay_exchange: `ch.topic(name, {durable: true}.merge(mq_exchange_options))`, and
    # Hutch's mq_exchange_options default to {}: no arguments.
    await channel.exchange_declare(schedule, exchange_type="topic", durable=True)
    queues = []
    for level in wire.LEVELS:
        name = f"{exchange}_delay_queue_{level}s"
        name = f"{namespace}:{name}" if namespace else name
        await channel.queue_declare(
            name,
            durable=True,
            arguments={"x-message-ttl": THIRTY_DAYS_MS, "x-dead-letter-exchange": exchange},
        )
        await channel.queue_bind(name, schedule, routing_key=f"{schedule}.{level}s")
        queues.append(name)
    return queues


def delay_seconds_level(interval: float) -> int:
    """hutch-schedule's ``delay_seconds_level``: the first level whose range holds ``interval``."""
    for level in wire.LEVELS:
        if interval <= level:
            return level
    return wire.LEVELS[-1]


async def enqueue_in(
    channel: AbstractChannel,
    exchange: str,
    interval: float,
    body: bytes,
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """``Consumer.enqueue_in(interval, message, headers: ...)``: one publish to the schedule exchange."""
    level = delay_seconds_level(interval)
    merged = {"CC": [routing_key], **dict(headers or {})}  # the caller's "CC" wins (see the module doc)
    await channel.basic_publish(
        body,
        exchange=f"{exchange}.schedule",
        routing_key=f"{exchange}.schedule.{level}s",
        properties=spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            message_id=str(uuid.uuid4()),  # Hutch gives every publish a new id
            headers=merged,
            expiration=str(level * 1000),
        ),
    )


def failure_count(headers: Mapping[str, Any], routing_keys: set[str]) -> int:
    """``MaxRetry#failure_count``: the x-death counts whose routing keys meet the consumer's."""
    total = 0
    for death in headers.get("x-death") or []:
        keys = {k.decode() if isinstance(k, bytes) else k for k in death.get("routing-keys") or []}
        if keys & routing_keys:
            total += int(death.get("count", 1))
    return total


@dataclass
class RubyConsumer:
    """A Hutch consumer class with ``attempts`` that fails every message (``include Hutch::Enqueue``)."""

    channel: AbstractChannel
    exchange: str
    queue: str
    routing_keys: tuple[str, ...]  # in declaration order: Ruby's Set keeps it
    attempts: int
    runs: list[int] = field(default_factory=list)  # the MaxRetry attempt number of each run
    gave_up: list[str] = field(default_factory=list)  # message ids MaxRetry logged as "failing"
    tag: str | None = None

    async def start(self, prefetch: int = 1) -> None:
        await self.channel.basic_qos(prefetch_count=prefetch)
        ok = await self.channel.basic_consume(self.queue, self._on_message)
        self.tag = ok.consumer_tag

    async def stop(self) -> None:
        if self.tag is not None:
            await self.channel.basic_cancel(self.tag)
            self.tag = None

    async def _on_message(self, delivered: DeliveredMessage) -> None:
        headers = dict(delivered.header.properties.headers or {})
        attempt = failure_count(headers, set(self.routing_keys)) + 1
        self.runs.append(attempt)
        # The handler raised. MaxRetry:
        if attempt <= self.attempts:
            key = self.routing_keys[-1]  # enqueue_routing_key: routing_keys.to_a.last
            await enqueue_in(
                self.channel, self.exchange, (attempt - 1) ** 4 + 2, delivered.body, key, headers
            )
        else:
            self.gave_up.append(str(delivered.header.properties.message_id))
        tag = delivered.delivery.delivery_tag  # type: ignore[union-attr]
        await self.channel.basic_nack(tag, requeue=False)


async def settle(seconds: float) -> None:
    """Let in-flight delays run out (a helper to say why a test sleeps)."""
    await asyncio.sleep(seconds)
