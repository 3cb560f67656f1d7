"""What a pool or publisher declares on the broker: a plan built from ``wire``'s rules, and its declaration.

The plan is data, so ``event topology`` can print it and compare it with the broker, and the pool
declares exactly what it prints. A failed declare closes the channel it was sent on, so a mismatch is
fatal for that channel: callers treat :class:`TopologyMismatch` as a configuration error. Every other
refusal (a classic queue whose home node is down answers NOT_FOUND, a queue process being restarted)
is raised as :class:`ConnectionFailed` naming the queue and the broker's words: it may pass, so callers
retry it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiormq import exceptions as amqp_errors

from event import wire
from event.connection import Channel
from event.errors import ConfigurationError, ConnectionFailed, EventError, TopologyMismatch
from event.management import ManagementApi

# What the broker (or the client, about a closed channel or connection) raises when a declare cannot be
# carried out now; not a statement about our configuration.
_TRANSIENT = (amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, ConnectionError, RuntimeError)


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
) -> Plan:
    """A pool's topology: the delay plan, the dead queue, and each consumer's (handler, queue, args, keys)."""
    base = delay_plan(namespace, exchange)
    dead = Queue(
        wire.dead_queue_name(namespace, exchange),
        "dead queue",
        {
            **wire.dead_queue_arguments(dead_ttl_ms, dead_max_length),
            **({"x-queue-type": dead_queue_type} if dead_queue_type else {}),
        },
    )
    queues = [
        Queue(queue, f"queue of consumer {handler}", dict(arguments), tuple((exchange, key) for key in keys))
        for handler, queue, arguments, keys in consumers
    ]
    return Plan(base.exchanges, (*base.queues, dead, *queues))


async def declare(channel: Channel, plan: Plan) -> None:
    """Declare every exchange, queue and binding of ``plan``; the first refusal raises (see above)."""
    for exchange in plan.exchanges:
        await declare_exchange(channel, exchange)
    for queue in plan.queues:
        await declare_queue(channel, queue)


async def declare_each(open_channel: Callable[[], Awaitable[Channel]], plan: Plan) -> dict[str, EventError]:
    """Declare what can be declared of ``plan``; the refusals, by exchange or queue name (empty: all done).

    A refusal closes its channel, so the next queue is declared on a fresh one from ``open_channel``.
    Exchanges come first and a refused exchange ends the attempt (its queues' bindings would fail too).
    """
    refused: dict[str, EventError] = {}
    channel = await open_channel()
    try:
        for exchange in plan.exchanges:
            try:
                await declare_exchange(channel, exchange)
            except EventError as exc:
                return {exchange.name: exc}
        for queue in plan.queues:
            if channel.is_closed:
                channel = await open_channel()
            try:
                await declare_queue(channel, queue)
            except EventError as exc:
                refused[queue.name] = exc
    finally:
        if not channel.is_closed:
            await channel.close()
    return refused


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
    except amqp_errors.ChannelAccessRefused as exc:
        raise ConfigurationError(
            f"the broker refused to declare exchange {exchange.name!r}: {_reply(exc)}"
        ) from exc
    except _TRANSIENT as exc:
        raise ConnectionFailed(f"could not declare exchange {exchange.name!r}: {_reply(exc)}") from exc


async def declare_queue(channel: Channel, queue: Queue) -> None:
    """A durable, non-exclusive, non-auto-delete queue with exactly its arguments, and its bindings."""
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
    except _TRANSIENT as exc:
        raise ConnectionFailed(f"could not declare {queue.role} {queue.name!r}: {_reply(exc)}") from exc
    for source, key in queue.bindings:
        try:
            await channel.queue_bind(queue=queue.name, exchange=source, routing_key=key)
        except amqp_errors.ChannelAccessRefused as exc:
            raise ConfigurationError(
                f"the broker refused to bind {queue.role} {queue.name!r} to {source!r}: {_reply(exc)}"
            ) from exc
        except _TRANSIENT as exc:
            raise ConnectionFailed(
                f"could not bind {queue.role} {queue.name!r} to {source!r} with {key!r}: {_reply(exc)}"
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
