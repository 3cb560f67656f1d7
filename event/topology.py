"""Declaring exchanges, queues and bindings from ``wire``'s answers, with mismatches reported clearly.

A failed declare closes the channel it was sent on, so each step uses the channel it is given and a
mismatch is fatal for that channel: callers treat :class:`TopologyMismatch` as a configuration error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiormq import exceptions as amqp_errors

from event import wire
from event.connection import Channel
from event.errors import ConfigurationError, TopologyMismatch


async def declare_exchange(channel: Channel, exchange: str) -> None:
    """The main exchange as Hutch declares it: topic, durable, not auto-delete, no arguments."""
    try:
        await channel.exchange_declare(
            exchange=exchange, exchange_type="topic", durable=True, auto_delete=False
        )
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"exchange {exchange!r} already exists with other properties than ours "
            f"(type topic, durable, no arguments); the broker says: {_reply(exc)}. "
            f"Use another exchange name or delete the old exchange."
        ) from exc


async def declare_queue(
    channel: Channel, queue: str, arguments: Mapping[str, Any], *, role: str = "queue"
) -> None:
    """A durable, non-exclusive, non-auto-delete queue with exactly ``arguments``."""
    try:
        await channel.queue_declare(
            queue=queue, durable=True, exclusive=False, auto_delete=False, arguments=dict(arguments)
        )
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"{role} {queue!r} already exists with other arguments than ours ({dict(arguments)!r}); "
            f"the broker says: {_reply(exc)}. Change the options to match, or delete the queue "
            f"(`rabbitmqctl delete_queue {queue}`) once it is drained."
        ) from exc
    except amqp_errors.ChannelAccessRefused as exc:
        raise ConfigurationError(f"the broker refused to declare {role} {queue!r}: {_reply(exc)}") from exc


async def bind_queue(channel: Channel, queue: str, exchange: str, keys: Iterable[str]) -> None:
    """One binding of ``queue`` on ``exchange`` per key."""
    for key in keys:
        await channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)


async def declare_dead_queue(channel: Channel, queue: str, *, ttl_ms: int, max_length: int) -> None:
    """The bounded dead queue of spec section 7."""
    await declare_queue(channel, queue, wire.dead_queue_arguments(ttl_ms, max_length), role="dead queue")


async def declare_delay_queues(channel: Channel, namespace: str, exchange: str) -> None:
    """hutch-schedule's 21 delay queues, with exactly its arguments so both sides can declare them.

    Each is also bound, by its own name, to the direct delay exchange our delayed copies go through.
    """
    delay_exchange = wire.delay_exchange_name(exchange)
    try:
        await channel.exchange_declare(
            exchange=delay_exchange, exchange_type="direct", durable=True, auto_delete=False
        )
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"exchange {delay_exchange!r} already exists with other properties than ours (type direct, "
            f"durable); the broker says: {_reply(exc)}"
        ) from exc
    arguments = wire.delay_queue_arguments(exchange)
    for level in wire.LEVELS:
        queue = wire.delay_queue_name(namespace, exchange, level)
        await declare_queue(channel, queue, arguments, role="delay queue")
        await channel.queue_bind(queue=queue, exchange=delay_exchange, routing_key=queue)


def _reply(exc: BaseException) -> str:
    for arg in exc.args:
        text = getattr(arg, "reply_text", None)
        if isinstance(text, str):
            return text
    return str(exc)
