"""What a pool or publisher declares on the broker: a plan built from ``wire``'s rules, and its declaration.

The plan is data, so ``event topology`` can print it and compare it with the broker, and the pool
declares exactly what it prints. A failed declare closes the channel it was sent on, so a mismatch is
fatal for that channel: callers treat :class:`TopologyMismatch` as a configuration error. Every other
refusal (a classic queue whose home node is down answers NOT_FOUND, a queue process being restarted)
is raised as :class:`ConnectionFailed` naming the queue and the broker's words: it may pass, so callers
retry it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from event import driver, wire
from event.connect import Channel, broker_reason
from event.errors import ConfigurationError, ConnectionFailed, EventError, TopologyMismatch
from event.management import ManagementApi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """A binding from the exchange ``source`` with routing ``key`` (and, on a headers exchange, arguments)."""

    source: str
    key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Exchange:
    """An exchange to declare: durable, not auto-delete, with ``arguments``; ``bindings`` lead into it."""

    name: str
    kind: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()


@dataclass(frozen=True)
class Queue:
    """A durable queue to declare with exactly ``arguments``, and its bindings.

    A queue that is not ``required`` is one the pool works without (hutch-schedule's classic delay
    queues, whose home node may be down in a cluster): it is declared after all the others.
    """

    name: str
    role: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()
    required: bool = True


@dataclass(frozen=True)
class Plan:
    """Everything to declare, in order: exchanges (then the bindings between them), then queues."""

    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``event topology --json``)."""
        return {
            "exchanges": [
                {
                    "name": e.name,
                    "type": e.kind,
                    "arguments": e.arguments,
                    "bindings": [_binding_dict(b) for b in e.bindings],
                }
                for e in self.exchanges
            ],
            "queues": [
                {
                    "name": q.name,
                    "role": q.role,
                    "arguments": q.arguments,
                    "bindings": [_binding_dict(b) for b in q.bindings],
                }
                for q in self.queues
            ],
        }


def _binding_dict(binding: Binding) -> dict[str, Any]:
    shown: dict[str, Any] = {"exchange": binding.source, "routing_key": binding.key}
    if binding.arguments:
        shown["arguments"] = binding.arguments
    return shown


def publisher_plan(
    namespace: str, exchange: str, *, queue_type: str | None = None, delay_queues: bool = False
) -> Plan:
    """What a publisher declares, and the base of a pool's plan: what delaying needs, the exchanges and
    event's park queues (and, if asked, hutch-schedule's). (``wire.delay_plan`` is another idea: where one
    delayed message is parked, and until when.)

    A copy enters its park queue through the headers exchange ``<exchange>.park`` (each park queue
    bound by its own name in ``event-park-in``), keeping its event's routing key, and leaves through the
    headers exchange ``<exchange>.unpark``. Park queues stay bound to the direct exchange
    ``<exchange>.delay`` by their name too: the way in of the versions before, whose publishers may
    still run during an upgrade.

    hutch-schedule's delay queues are declared and bound to ``<exchange>.schedule`` only with
    ``delay_queues`` (a pool that stands alone, with no Ruby service binding that exchange): each
    namespace bound there makes one more copy of every hutch-schedule message, for every Ruby queue
    on its key. They come last: they are classic queues that Ruby may share, and the pool can work
    without them (see :attr:`Queue.required`).
    """
    delay = wire.delay_exchange_name(exchange)
    entry = wire.park_entry_exchange_name(exchange)
    unpark = wire.unpark_exchange_name(exchange)
    exchanges = [
        Exchange(exchange, "topic", bindings=(Binding(unpark, "", wire.delayed_event_binding_arguments()),)),
        Exchange(delay, "direct"),
        Exchange(entry, "headers"),
        Exchange(unpark, "headers"),
    ]
    park_arguments = wire.park_queue_arguments(exchange, queue_type)
    parks = []
    for level in wire.LEVELS:
        park = wire.park_queue_name(namespace, exchange, level)
        bindings = (Binding(entry, "", wire.park_entry_binding_arguments(park)), Binding(delay, park))
        parks.append(Queue(park, "park queue", park_arguments, bindings))
    if not delay_queues:
        return Plan(tuple(exchanges), tuple(parks))
    schedule = wire.schedule_exchange_name(exchange)
    exchanges.append(Exchange(schedule, "topic"))  # as hutch-schedule 0.7.3 declares it: no arguments
    return Plan(tuple(exchanges), (*parks, *schedule_queues(namespace, exchange)))


def schedule_queues(namespace: str, exchange: str) -> tuple[Queue, ...]:
    """hutch-schedule's 21 delay queues of ``namespace``, each bound to the schedule exchange by its level."""
    schedule = wire.schedule_exchange_name(exchange)
    return tuple(
        Queue(
            wire.delay_queue_name(namespace, exchange, level),
            "hutch-schedule delay queue",
            wire.delay_queue_arguments(exchange),
            (Binding(schedule, wire.schedule_routing_key(exchange, level)),),
            required=False,
        )
        for level in wire.LEVELS
    )


def consumer_bindings(exchange: str, queue: str, keys: Iterable[str]) -> tuple[Binding, ...]:
    """A consumer queue's bindings: its keys on the main exchange, and its parked copies on the unpark one."""
    return (
        *(Binding(exchange, key) for key in keys),
        Binding(wire.unpark_exchange_name(exchange), "", wire.park_binding_arguments(queue)),
    )


def pool_plan(
    namespace: str,
    exchange: str,
    *,
    dead_ttl_ms: int,
    dead_max_length: int,
    consumers: Iterable[tuple[str, str, dict[str, Any], tuple[str, ...]]],
    dead_queue_type: str | None = None,
    max_deliveries: Mapping[str, int] | None = None,
    delay_queues: bool = False,
    max_priorities: Mapping[str, int] | None = None,
) -> Plan:
    """A pool's topology: the delay plan, the dead queue, and each consumer's (handler, queue, args, keys).

    A quorum consumer queue also gets a delivery limit above its consumer's ``max_deliveries`` (by
    queue name) and a dead-letter route to the dead queue, so that the broker's own limit (20 by
    default from RabbitMQ 4.0) moves a message where an operator sees it instead of dropping it.

    A consumer with a max priority (by queue name) gets ``x-max-priority`` on a classic queue; a quorum
    queue takes no such argument (RabbitMQ refuses it): from 4.0 every quorum queue orders by priority.
    """
    base = publisher_plan(namespace, exchange, queue_type=dead_queue_type, delay_queues=delay_queues)
    dead_name = wire.dead_queue_name(namespace, exchange)
    limits = max_deliveries or {}
    priorities = max_priorities or {}

    def consumer_arguments(queue: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if arguments.get("x-queue-type") != "quorum":
            priority = priorities.get(queue)
            return {**arguments, "x-max-priority": priority} if priority else dict(arguments)
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
            consumer_bindings(exchange, queue, keys),
        )
        for handler, queue, arguments, keys in consumers
    ]
    needed = [q for q in base.queues if q.required]
    optional = [q for q in base.queues if not q.required]
    return Plan(base.exchanges, (*needed, dead, *queues, *optional))


async def declare(channel: Channel, plan: Plan) -> None:
    """Declare every exchange, queue and binding of ``plan``; the first refusal of a required one raises.

    A queue that is not required and is refused is a warning; the refusal closed the channel, and such
    queues all come last, so declaring stops there.
    """
    for exchange in plan.exchanges:
        await declare_exchange(channel, exchange)
    for exchange in plan.exchanges:
        await bind_exchange(channel, exchange)
    for queue in plan.queues:
        try:
            await declare_queue(channel, queue)
        except EventError as exc:
            if queue.required:
                raise
            _not_required_refused(queue, exc)
            return


async def remove(channel: Channel, plan: Plan) -> None:
    """Delete what ``plan`` declares, its queues then its exchanges (what it holds is lost): for a
    benchmark or a tool that must leave nothing behind."""
    for queue in plan.queues:
        await channel.queue_delete(queue.name)
    for exchange in plan.exchanges:
        await channel.exchange_delete(exchange.name)


async def declare_each(open_channel: Callable[[], Awaitable[Channel]], plan: Plan) -> dict[str, EventError]:
    """Declare what can be declared of ``plan``; the refusals, by exchange or queue name (empty: all done).

    A refusal closes its channel, so the next queue is declared on a fresh one from ``open_channel``.
    Exchanges come first and a refused exchange ends the attempt (its queues' bindings would fail too).
    A queue that is not required and is refused is logged, not returned: the caller does without it.
    """
    refused: dict[str, EventError] = {}
    channel = await open_channel()
    try:
        for exchange in plan.exchanges:
            try:
                await declare_exchange(channel, exchange)
            except EventError as exc:
                return {exchange.name: exc}
        for exchange in plan.exchanges:
            try:
                await bind_exchange(channel, exchange)
            except EventError as exc:
                return {exchange.name: exc}
        for queue in plan.queues:
            if channel.is_closed:
                channel = await open_channel()
            try:
                await declare_queue(channel, queue)
            except EventError as exc:
                if queue.required:
                    refused[queue.name] = exc
                else:
                    _not_required_refused(queue, exc)
    finally:
        if not channel.is_closed:
            await channel.close()
    return refused


def _not_required_refused(queue: Queue, exc: EventError) -> None:
    log.warning("could not declare %s %r (%s); going on without it", queue.role, queue.name, exc)


async def bind_exchange(channel: Channel, exchange: Exchange) -> None:
    """The bindings that lead into ``exchange`` from other exchanges."""
    await _bind(channel.exchange_bind, exchange.name, f"exchange {exchange.name!r}", exchange.bindings)


@contextmanager
def _refusals(action: str, mismatch: Callable[[str], str] | None = None) -> Iterator[None]:
    """The driver's refusal of ``action`` (``"declare exchange 'x'"``) raised as event's, one rule for every
    declare and bind: PRECONDITION_FAILED is a :class:`TopologyMismatch` worded by ``mismatch`` (given the
    broker's words) when there is one, ACCESS_REFUSED a :class:`ConfigurationError`, anything else that
    may pass a :class:`ConnectionFailed`."""
    try:
        yield
    except (driver.AMQPError, ConnectionError) as exc:  # the broker's refusal, or the channel gone
        reason = broker_reason(exc)
        if mismatch is not None and isinstance(exc, driver.PreconditionFailed):
            raise TopologyMismatch(mismatch(reason)) from exc
        if isinstance(exc, driver.AccessRefused):
            raise ConfigurationError(f"the broker refused to {action}: {reason}") from exc
        # Not a statement about our configuration: it may pass, so callers retry it.
        raise ConnectionFailed(f"could not {action}: {reason}") from exc


async def _bind(
    bind: Callable[[str, str, str, driver.Arguments | None], Awaitable[None]],
    name: str,
    what: str,
    bindings: Iterable[Binding],
) -> None:
    """Each of ``bindings`` into ``name`` (``what``, for the errors) by ``bind``: the channel's
    ``exchange_bind`` or ``queue_bind``, which both take the destination, source, key and arguments."""
    for binding in bindings:
        with _refusals(f"bind {what} to {_shown(binding)}"):
            await bind(name, binding.source, binding.key, dict(binding.arguments) or None)


async def declare_exchange(channel: Channel, exchange: Exchange) -> None:
    """One exchange as Hutch declares its own: durable, not auto-delete, arguments only where needed."""
    with _refusals(
        f"declare exchange {exchange.name!r}",
        lambda reason: (
            f"exchange {exchange.name!r} already exists with other properties than ours "
            f"(type {exchange.kind}, durable, no arguments); the broker says: {reason}. "
            f"Use another exchange name or delete the old exchange."
        ),
    ):
        await channel.exchange_declare(
            exchange=exchange.name,
            exchange_type=exchange.kind,
            durable=True,
            auto_delete=False,
            arguments=dict(exchange.arguments) or None,
        )


async def declare_queue(channel: Channel, queue: Queue) -> None:
    """A durable, non-exclusive, non-auto-delete queue with exactly its arguments, and its bindings."""
    with _refusals(
        f"declare {queue.role} {queue.name!r}",
        lambda reason: (
            f"{queue.role} {queue.name!r} already exists with other arguments than ours "
            f"({queue.arguments!r}); the broker says: {reason}. Change the options to match"
            f"{_PARK_HINT if queue.role == 'park queue' else ''}, or delete the queue "
            f"(`rabbitmqctl delete_queue {queue.name}`) once it is drained."
        ),
    ):
        await channel.queue_declare(
            queue=queue.name,
            durable=True,
            exclusive=False,
            auto_delete=False,
            arguments=dict(queue.arguments),
        )
    await _bind(channel.queue_bind, queue.name, f"{queue.role} {queue.name!r}", queue.bindings)


# Arguments a broker reports that nobody declared: RabbitMQ 4.x lists the queue type it chose. At these values
# they mean what leaving them out means, so they are no difference; at any other value they are one.
SERVER_DEFAULTS: dict[str, Any] = {"x-queue-type": "classic"}


async def differences(plan: Plan, api: ManagementApi) -> list[str]:
    """What the broker lacks or has otherwise than ``plan``, one sentence each (empty: they match).

    Queue arguments are compared modulo :data:`SERVER_DEFAULTS`: a classic queue that RabbitMQ 4.x reports
    with ``x-queue-type: classic`` matches a plan that does not name its type, as it does on 3.x.
    """

    def meaning(arguments: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in arguments.items() if k not in SERVER_DEFAULTS or SERVER_DEFAULTS[k] != v}

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
        if meaning(actual.get("arguments") or {}) != meaning(queue.arguments):
            has = actual.get("arguments")
            found.append(f"{queue.role} {queue.name!r} has arguments {has!r}, not {queue.arguments!r}")
        bound = [b for b in await api.bindings(queue.name) if b.get("source")]
        for binding in queue.bindings:
            if not any(_same_binding(binding, b) for b in bound):
                found.append(f"{queue.role} {queue.name!r} is not bound to {_shown(binding)}")
    return found


_PARK_HINT = " (every WorkerPool and Publisher of a namespace must be given the same queue_type)"


def _same_binding(binding: Binding, reported: dict[str, Any]) -> bool:
    return (
        reported.get("source") == binding.source
        and reported.get("routing_key") == binding.key
        and (reported.get("arguments") or {}) == binding.arguments
    )


def _shown(binding: Binding) -> str:
    arguments = f" and arguments {binding.arguments!r}" if binding.arguments else ""
    return f"{binding.source!r} with {binding.key!r}{arguments}"
