"""What a pool or publisher declares on the broker: a plan built from ``wire``'s rules, and its declaration.

The plan is data, so ``event topology`` can print it and compare it with the broker, and the pool
declares exactly what it prints. A failed declare closes the channel it was sent on, so a mismatch is
fatal for that channel: callers treat :class:`TopologyMismatch` as a configuration error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiormq import exceptions as amqp_errors

from event import wire
from event.connection import Channel
from event.errors import ConfigurationError, TopologyMismatch
from event.management import ManagementApi


@dataclass(frozen=True)
class Exchange:
    """An exchange to declare: durable, not auto-delete, no arguments."""

    name: str
    kind: str


@dataclass(frozen=True)
class Queue:
    """A durable queue to declare with exactly ``arguments``, and its bindings (exchange, key)."""

    name: str
    role: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    """Everything to declare, in order: exchanges first, then queues with their bindings."""

    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``event topology --json``)."""
        return {
            "exchanges": [{"name": e.name, "type": e.kind} for e in self.exchanges],
            "queues": [
                {
                    "name": q.name,
                    "role": q.role,
                    "arguments": q.arguments,
                    "bindings": [{"exchange": x, "routing_key": k} for x, k in q.bindings],
                }
                for q in self.queues
            ],
        }


def delay_plan(namespace: str, exchange: str) -> Plan:
    """The main exchange and hutch-schedule's delay queues, bound by their own names on the delay exchange."""
    delay_exchange = wire.delay_exchange_name(exchange)
    arguments = wire.delay_queue_arguments(exchange)
    queues = []
    for level in wire.LEVELS:
        name = wire.delay_queue_name(namespace, exchange, level)
        queues.append(Queue(name, "delay queue", arguments, ((delay_exchange, name),)))
    return Plan((Exchange(exchange, "topic"), Exchange(delay_exchange, "direct")), tuple(queues))


def pool_plan(
    namespace: str,
    exchange: str,
    *,
    dead_ttl_ms: int,
    dead_max_length: int,
    consumers: Iterable[tuple[str, str, dict[str, Any], tuple[str, ...]]],
    dead_queue_type: str | None = None,
    max_deliveries: Mapping[str, int] | None = None,
) -> Plan:
    """A pool's topology: the delay plan, the dead queue, and each consumer's (handler, queue, args, keys).

    A quorum consumer queue also gets a delivery limit above its consumer's ``max_deliveries`` (by
    queue name) and a dead-letter route to the dead queue, so that the broker's own limit (20 by
    default from RabbitMQ 4.0) moves a message where an operator sees it instead of dropping it.
    """
    base = delay_plan(namespace, exchange)
    dead_name = wire.dead_queue_name(namespace, exchange)
    limits = max_deliveries or {}

    def consumer_arguments(queue: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if arguments.get("x-queue-type") != "quorum":
            return dict(arguments)
        limit = limits.get(queue, wire.DEFAULT_MAX_DELIVERIES)
        return {**wire.quorum_poison_arguments(dead_name, limit), **arguments}  # the consumer's own win

    dead = Queue(
        dead_name,
        "dead queue",
        {
            **wire.dead_queue_arguments(dead_ttl_ms, dead_max_length),
            **({"x-queue-type": dead_queue_type} if dead_queue_type else {}),
        },
    )
    queues = [
        Queue(
            queue,
            f"queue of consumer {handler}",
            consumer_arguments(queue, arguments),
            tuple((exchange, key) for key in keys),
        )
        for handler, queue, arguments, keys in consumers
    ]
    return Plan(base.exchanges, (*base.queues, dead, *queues))


async def declare(channel: Channel, plan: Plan) -> None:
    """Declare every exchange, queue and binding of ``plan``."""
    for exchange in plan.exchanges:
        await declare_exchange(channel, exchange)
    for queue in plan.queues:
        await declare_queue(channel, queue)
        for source, key in queue.bindings:
            await channel.queue_bind(queue=queue.name, exchange=source, routing_key=key)


async def declare_exchange(channel: Channel, exchange: Exchange) -> None:
    """One exchange as Hutch declares its own: durable, not auto-delete, no arguments."""
    try:
        await channel.exchange_declare(
            exchange=exchange.name, exchange_type=exchange.kind, durable=True, auto_delete=False
        )
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"exchange {exchange.name!r} already exists with other properties than ours "
            f"(type {exchange.kind}, durable, no arguments); the broker says: {_reply(exc)}. "
            f"Use another exchange name or delete the old exchange."
        ) from exc


async def declare_queue(channel: Channel, queue: Queue) -> None:
    """A durable, non-exclusive, non-auto-delete queue with exactly its arguments."""
    try:
        await channel.queue_declare(
            queue=queue.name,
            durable=True,
            exclusive=False,
            auto_delete=False,
            arguments=dict(queue.arguments),
        )
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"{queue.role} {queue.name!r} already exists with other arguments than ours "
            f"({queue.arguments!r}); the broker says: {_reply(exc)}. Change the options to match, or "
            f"delete the queue (`rabbitmqctl delete_queue {queue.name}`) once it is drained."
        ) from exc
    except amqp_errors.ChannelAccessRefused as exc:
        raise ConfigurationError(
            f"the broker refused to declare {queue.role} {queue.name!r}: {_reply(exc)}"
        ) from exc


async def differences(plan: Plan, api: ManagementApi) -> list[str]:
    """What the broker lacks or has otherwise than ``plan``, one sentence each (empty: they match)."""
    found: list[str] = []
    for exchange in plan.exchanges:
        actual = await api.exchange(exchange.name)
        if actual is None:
            found.append(f"exchange {exchange.name!r} is missing")
        elif actual.get("type") != exchange.kind or not actual.get("durable"):
            found.append(
                f"exchange {exchange.name!r} is {actual.get('type')} (durable={actual.get('durable')}), "
                f"not {exchange.kind} (durable=True)"
            )
    for queue in plan.queues:
        actual = await api.queue(queue.name)
        if actual is None:
            found.append(f"{queue.role} {queue.name!r} is missing")
            continue
        if (actual.get("arguments") or {}) != queue.arguments:
            has = actual.get("arguments")
            found.append(f"{queue.role} {queue.name!r} has arguments {has!r}, not {queue.arguments!r}")
        bound = {(b["source"], b["routing_key"]) for b in await api.bindings(queue.name) if b.get("source")}
        for source, key in queue.bindings:
            if (source, key) not in bound:
                found.append(f"{queue.role} {queue.name!r} is not bound to {source!r} with {key!r}")
    return found


def _reply(exc: BaseException) -> str:
    for arg in exc.args:
        text = getattr(arg, "reply_text", None)
        if isinstance(text, str):
            return text
    return str(exc)
