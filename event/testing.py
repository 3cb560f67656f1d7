"""An in-memory RabbitMQ for users' unit tests: routing, delays on a virtual clock, retries, dead queue.

::

    async with TestBroker(pool, publisher) as broker:
        await publisher.publish("app.send_email", {"to": "a@b.c"})
        await broker.drain()                       # every handler has run
        await publisher.publish_in(60, "app.remind", {})
        await broker.advance(60)                   # a minute passes, at once
        assert broker.published("app.remind") == [{}]
        assert broker.dead() == []

It plays the broker's part of AMQP that `event` uses, the way RabbitMQ 3.10 plays it: topic, direct
and default exchanges, ``CC`` routing, per-message and per-queue TTL (the smaller wins, expiring from
the head only) with dead-lettering and RabbitMQ's ``x-death``, ``x-max-length``, exclusive queues,
prefetch, acks, rejects and redelivery, and redeclaration compared on the arguments RabbitMQ compares.
Properties go through pamqp's encoder and decoder, as on a real connection, so a header the client
cannot encode raises ``TypeError`` and a float comes back as the 32-bit float it was sent as. The
project runs one scenario suite against it and against RabbitMQ
(``tests/integration/test_scenarios.py``): a difference is a bug here. It does not emulate connection
failures, publisher nacks or memory alarms.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import time
import uuid
import warnings
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import orjson
from pamqp import decode as amqp_decode
from pamqp import encode as amqp_encode
from pamqp import frame as amqp_frame
from pamqp.header import ContentHeader

from event import driver, protobuf, wire
from event.config import redact_url
from event.driver import Arguments, Delivery, OnCancel, OnDelivery, Properties, QueueInfo
from event.pool import WorkerPool
from event.publisher import Publisher


@dataclass
class _Message:
    body: bytes
    props: Properties
    exchange: str
    routing_key: str
    expires_at: float | None = None
    redelivered: bool = False


class NotEmulatedWarning(UserWarning):
    """A queue asks for a RabbitMQ feature TestBroker does not emulate: there, it behaves differently."""


# RabbitMQ queue arguments with an effect TestBroker does not play; a queue declared with one warns,
# rather than silently behaving unlike RabbitMQ. (Arguments RabbitMQ itself ignores are ignored here.)
_NOT_EMULATED_ARGUMENTS = {
    "x-expires": "the queue is never deleted when unused",
    "x-max-length-bytes": "no byte limit applies",
    "x-overflow": "x-max-length always drops the oldest",
    "x-single-active-consumer": "every consumer receives messages",
    "x-delivery-limit": "redeliveries are unlimited",
    "x-dead-letter-strategy": "dead-lettering is at-most-once",
}


def _warn_not_emulated(queue: str, arguments: dict[str, Any]) -> None:
    for key, how in _NOT_EMULATED_ARGUMENTS.items():
        if key == "x-delivery-limit" and "x-delayed-retry-type" in arguments:
            continue  # played with the delayed retry (see _Channel._retry_later)
        if key in arguments:
            warnings.warn(
                f"TestBroker does not emulate {key} (queue '{queue}'): {how}", NotEmulatedWarning, 3
            )
    kind = arguments.get("x-queue-type", "classic")
    if kind != "classic":
        warnings.warn(
            f"TestBroker plays the {kind} queue '{queue}' as a classic queue (no {kind}-queue specifics"
            f"{', no priorities: FIFO order' if kind == 'quorum' else ''})",
            NotEmulatedWarning,
            3,
        )


@dataclass
class _Exchange:
    kind: str
    durable: bool
    arguments: dict[str, Any]


@dataclass
class _Queue:
    name: str
    durable: bool
    exclusive_owner: _Connection | None
    arguments: dict[str, Any]
    auto_delete: bool = False
    messages: deque[_Message] = field(default_factory=deque)
    consumers: list[_Subscription] = field(default_factory=list)
    turn: int = 0


@dataclass
class _Subscription:
    channel: _Channel
    tag: str
    on_delivery: OnDelivery
    on_cancel: OnCancel | None
    no_ack: bool


@dataclass
class Published:
    """One publish the broker accepted."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    content_type: str | None = None

    @property
    def event_routing_key(self) -> str:
        """The event's own routing key, also for delayed and retried copies."""
        own = self.headers.get(wire.H_ROUTING_KEY)
        return own if isinstance(own, str) else self.routing_key

    @property
    def is_copy(self) -> bool:
        """Whether the pool made this publish itself: a retry, a re-park or a dead copy."""
        headers = self.headers
        if wire.H_ERROR in headers:
            return True
        retries = headers.get(wire.H_RETRIES)
        if isinstance(retries, int) and retries > 0:
            return True
        cc = _strings(headers.get("CC"))
        return bool(cc) and cc[0] != headers.get(wire.H_ROUTING_KEY, cc[0])

    @property
    def payload(self) -> Any:
        """The body, decoded from JSON; a protobuf body stays bytes (``Order.FromString(p.payload)``)."""
        if wire.media_type(self.content_type) in protobuf.BINARY_CONTENT_TYPES:
            return self.body
        return orjson.loads(self.body)


class VirtualClock:
    """The broker's virtual time, in epoch seconds: call it for the time, ``await sleep(s)`` to wait on it.

    Whatever takes a clock in `event` (the pool, the publisher, a rate limit) is given this one; a
    rate-limited message then waits for :meth:`TestBroker.advance`, not for real time to pass.
    """

    def __init__(self, start: float) -> None:
        self.now = start
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._released = False

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` of virtual time have passed."""
        if seconds <= 0 or self._released:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._order), waiter))
        await waiter

    @property
    def sleepers(self) -> int:
        """How many callers wait on a timer now."""
        return sum(1 for _, _, waiter in self._timers if not waiter.done())

    def next_timer(self) -> float | None:
        """When the earliest timer is due, if any."""
        while self._timers and self._timers[0][2].done():  # a cancelled sleep
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def release(self) -> None:
        """Wake every sleeper now, and every later one at once: the broker is shutting down."""
        self._released = True
        for _, _, waiter in self._timers:
            if not waiter.done():
                waiter.set_result(None)
        self._timers.clear()

    def fire(self) -> None:
        """Wake every sleeper whose time has come."""
        while self._timers and self._timers[0][0] <= self.now:
            _, _, waiter = heapq.heappop(self._timers)
            if not waiter.done():
                waiter.set_result(None)


class TestBroker:
    """An in-memory broker that the given pools and publishers connect to instead of RabbitMQ.

    The virtual clock starts at the real time (or ``start``, in epoch seconds) and moves only with
    :meth:`advance`; message timestamps, delays, TTLs, retries and rate limits all follow it.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, *clients: WorkerPool | Publisher, start: float | None = None) -> None:
        self.clients = clients
        self.clock = VirtualClock(time.time() if start is None else start)
        self.exchanges: dict[str, _Exchange] = {"": _Exchange("direct", durable=True, arguments={})}
        self.bindings: dict[str, list[tuple[str, str]]] = {}  # exchange -> [(queue, key)]
        # Bindings with arguments (a headers exchange) and between exchanges: source -> [(to, key, args)].
        self.header_bindings: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.exchange_bindings: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        self.queues: dict[str, _Queue] = {}
        self.log: list[Published] = []
        self._saved: list[tuple[Any, Any, Any]] = []
        self._running: list[AsyncExitStack] = []
        self._handing = 0  # deliveries on their way to a consumer's callback (see _deliver)
        self._retrying: set[asyncio.Task[None]] = set()  # rejected messages waiting out a delayed retry

    # --- the user's side ----------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The virtual time, in epoch seconds."""
        return self.clock.now

    @now.setter
    def now(self, value: float) -> None:
        self.clock.now = value

    async def __aenter__(self) -> Self:
        for client in self.clients:
            self._saved.append((client, client.connector, client.clock))
            client.connector = self.connect
            client.clock = self.clock
        stack = AsyncExitStack()
        await stack.__aenter__()
        self._running.append(stack)
        for client in self.clients:
            if isinstance(client, WorkerPool):
                await stack.enter_async_context(client.running())
            else:
                await client.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for client in self.clients:
            if isinstance(client, Publisher):
                await client.close()
        # A message waiting for its rate limit would hold the pool's shutdown for its whole grace
        # period of real time, the virtual clock never moving. Once the pools stop taking work, wake
        # it: not started, it stays unacked and is handed back, as at any shutdown.
        release = asyncio.get_running_loop().call_later(0.05, self.clock.release)
        try:
            for stack in self._running:
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            release.cancel()
        for client, connector, clock in self._saved:
            client.connector = connector
            client.clock = clock

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until no consumer has a message it could take now, or one in its hands.

        Messages waiting for their time (delayed, or held back by a rate limit) do not count: they
        wait for :meth:`advance`.
        """
        async with asyncio.timeout(timeout):
            while True:
                for _ in range(5):
                    await asyncio.sleep(0)
                await asyncio.sleep(0.001)
                deliverable = any(
                    q.messages and any(c.channel.has_room() for c in q.consumers)
                    for q in self.queues.values()
                )
                sleepers = self.clock.sleepers
                in_hand = sum(c.deliveries_in_hand for c in self.clients if isinstance(c, WorkerPool))
                if not deliverable and in_hand <= sleepers and not self._handing:
                    await asyncio.sleep(0.01)  # acks flush on a short timer
                    if self._unacked() <= self.clock.sleepers:
                        return

    def _unacked(self) -> int:
        channels = {id(c.channel): c.channel for q in self.queues.values() for c in q.consumers}
        return sum(len(ch.unacked) for ch in channels.values())

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass: what comes due (expiries, delays, rate-limited
        messages) happens in order, each handled as it comes."""
        target = self.now + seconds
        while True:
            await self.drain()
            due = [
                m.expires_at
                for q in self.queues.values()
                if q.messages and (m := q.messages[0]).expires_at is not None and m.expires_at <= target
            ]
            timer = self.clock.next_timer()
            if timer is not None and timer <= target:
                due.append(timer)
            if not due:
                break
            self.now = max(self.now, min(due))
            self.clock.fire()
            self._expire()
        self.now = target
        await self.drain()

    def published(self, routing_key: str | None = None) -> list[Any]:
        """Decoded bodies of the events published with ``routing_key`` (delayed ones included, the
        pool's own retry, re-park and dead copies not)."""
        return [
            p.payload
            for p in self.log
            if not p.is_copy and (routing_key is None or p.event_routing_key == routing_key)
        ]

    def dead(self) -> list[Published]:
        """What waits in the dead queues now."""
        return [
            Published(m.exchange, m.routing_key, m.body, dict(m.props.headers or {}), m.props.content_type)
            for q in self.queues.values()
            if q.name.endswith("_dead_queue")
            for m in q.messages
        ]

    # --- the broker's side ---------------------------------------------------------------------------------

    async def connect(self, url: str, *, name: str) -> _Connection:
        """What a client's ``connector`` calls: a connection of the driver seam (:mod:`event.driver`)."""
        return _Connection(self, url, name)

    def route(
        self, exchange: str, routing_key: str, headers: dict[str, Any], seen: frozenset[str] = frozenset()
    ) -> list[str]:
        keys = [routing_key, *_strings(headers.get("CC")), *_strings(headers.get("BCC"))]
        if exchange == "":
            return list(dict.fromkeys(k for k in keys if k in self.queues))
        kind = self.exchanges[exchange].kind
        found: dict[str, None] = {}
        for queue, pattern in self.bindings.get(exchange, []):
            if kind != "headers" and _key_matches(kind, pattern, keys):
                found[queue] = None
        for queue, arguments in self.header_bindings.get(exchange, []):
            if kind == "headers" and _headers_match(arguments, headers):
                found[queue] = None
        for target, pattern, arguments in self.exchange_bindings.get(exchange, []):
            if kind == "headers":
                matches = _headers_match(arguments, headers)
            else:
                matches = _key_matches(kind, pattern, keys)
            if matches and target not in seen and target in self.exchanges:
                found.update(dict.fromkeys(self.route(target, routing_key, headers, seen | {exchange})))
        return list(found)

    def publish(self, exchange: str, routing_key: str, body: bytes, props: Properties) -> list[str]:
        """Route a message as RabbitMQ does; the queues it reached (none: dropped, as RabbitMQ drops it)."""
        if exchange not in self.exchanges:
            raise driver.NotFound(404, f"NOT_FOUND - no exchange '{exchange}' in vhost '/'")
        headers = dict(props.headers or {})
        targets = self.route(exchange, routing_key, headers)
        headers.pop("BCC", None)
        self.log.append(Published(exchange, routing_key, body, headers, props.content_type))
        for name in targets:
            self._enqueue(
                self.queues[name], _Message(body, _with(props, headers=headers), exchange, routing_key)
            )
        return targets

    def _enqueue(self, queue: _Queue, message: _Message) -> None:
        # A message's expiration and its queue's x-message-ttl both apply: the smaller wins.
        ttls = [
            int(t) for t in (message.props.expiration, queue.arguments.get("x-message-ttl")) if t is not None
        ]
        message.expires_at = self.now + min(ttls) / 1000 if ttls else None
        _put(queue, message, at_head=False)
        limit = queue.arguments.get("x-max-length")
        while limit is not None and len(queue.messages) > limit:
            self._dead_letter(queue, queue.messages.popleft(), "maxlen")  # RabbitMQ drops the oldest
        self._deliver(queue)

    def _expire(self) -> None:
        for queue in list(self.queues.values()):
            self._expire_head(queue)

    def _expire_head(self, queue: _Queue) -> None:
        # RabbitMQ's classic queues expire from the head only: an expired message behind one that is
        # not waits (holding its place) until it reaches the head.
        while queue.messages and (m := queue.messages[0]).expires_at is not None and m.expires_at <= self.now:
            self._dead_letter(queue, queue.messages.popleft(), "expired")

    def _dead_letter(self, queue: _Queue, message: _Message, reason: str) -> None:
        """Republish ``message`` to its queue's dead-letter exchange, with RabbitMQ 3.10's headers."""
        exchange = queue.arguments.get("x-dead-letter-exchange")
        if exchange is None or exchange not in self.exchanges:
            return  # dropped, as RabbitMQ drops it
        headers = dict(message.props.headers or {})
        routing_key = queue.arguments.get("x-dead-letter-routing-key")
        keys = [message.routing_key, *_strings(headers.get("CC"))]
        if routing_key is not None:
            headers.pop("CC", None)  # a dead-letter routing key replaces every key, CC's too
        headers = _with_death(
            headers,
            reason=reason,
            queue=queue.name,
            exchange=message.exchange,
            routing_keys=keys,
            at=datetime.fromtimestamp(int(self.now), tz=UTC),
            expiration=message.props.expiration,
        )
        new_key = message.routing_key if routing_key is None else routing_key
        # Not through pamqp: its encoder sorts a table's keys, and RabbitMQ writes the new entry unsorted.
        props = _with(message.props, headers=headers, expiration=None)
        for name in self.route(exchange, new_key, headers):
            if reason != "rejected" and _is_cycle(name, props.headers or {}):
                continue  # RabbitMQ drops a message that would go round in circles with no reject
            self._enqueue(self.queues[name], _Message(message.body, props, exchange, new_key))

    def _deliver(self, queue: _Queue) -> None:
        while queue.messages and queue.consumers:
            self._expire_head(queue)  # an expired head is dead-lettered, never delivered
            if not queue.messages:
                return
            ready = [c for c in queue.consumers if c.channel.has_room()]
            if not ready:
                return
            consumer = ready[queue.turn % len(ready)]
            queue.turn += 1
            message = queue.messages.popleft()
            channel = consumer.channel
            delivery_tag = channel.take(queue, message)
            if consumer.no_ack:
                channel.unacked.pop(delivery_tag)  # settled on delivery, as no_ack asks
            delivery = Delivery(
                delivery_tag,
                message.redelivered,
                message.exchange,
                message.routing_key,
                message.props,
                message.body,
                consumer.tag,
            )
            # Handed over on a later turn of the loop, as a real connection's read loop does: never from
            # inside the call (an ack, a publish) that made the message deliverable.
            self._handing += 1
            asyncio.get_running_loop().call_soon(self._hand, consumer, delivery)

    def _hand(self, consumer: _Subscription, delivery: Delivery) -> None:
        self._handing -= 1
        if not consumer.channel.is_closed:  # else its unacked messages went back to the queue
            consumer.on_delivery(delivery)


def _priority(queue: _Queue, message: _Message) -> int | None:
    """A message's place in a classic priority queue (``x-max-priority``): its priority property (none
    is 0), capped at the queue's maximum, as RabbitMQ caps it; None for a FIFO queue."""
    top = queue.arguments.get("x-max-priority")
    if not isinstance(top, int) or isinstance(top, bool) or top <= 0:
        return None
    return min(message.props.priority or 0, top)


def _put(queue: _Queue, message: _Message, *, at_head: bool) -> None:
    """Enqueue ``message`` at the tail (a publish) or the head (a requeue) of its priority level.

    A priority queue holds messages highest priority first, FIFO within a priority, as RabbitMQ's
    classic priority queues deliver them (one FIFO queue per priority, the highest non-empty one first).
    """
    level = _priority(queue, message)
    messages = queue.messages
    if level is None:
        if at_head:
            messages.appendleft(message)
        else:
            messages.append(message)
        return
    if at_head:  # before every message of its priority or lower
        spot = next((i for i, m in enumerate(messages) if (_priority(queue, m) or 0) <= level), len(messages))
    else:  # after every message of its priority or higher: from the tail, where most publishes land
        spot = len(messages)
        while spot and (_priority(queue, messages[spot - 1]) or 0) < level:
            spot -= 1
    messages.insert(spot, message)


def _key_matches(kind: str, pattern: str, keys: list[str]) -> bool:
    if kind == "fanout":
        return True
    return any((wire.topic_matches(pattern, k) if kind == "topic" else pattern == k) for k in keys)


def _headers_match(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    # RabbitMQ's headers exchange: x-match all (the default) or any, over the arguments not starting x-.
    wanted = {k: v for k, v in arguments.items() if not k.startswith("x-")}
    hits = [headers.get(k) == v for k, v in wanted.items()]
    return any(hits) if arguments.get("x-match") == "any" else all(hits)


def _with_death(
    headers: dict[str, Any],
    *,
    reason: str,
    queue: str,
    exchange: str,
    routing_keys: list[str],
    at: datetime,
    expiration: str | None,
) -> dict[str, Any]:
    """``headers`` with the ``x-death`` entry RabbitMQ 3.10 writes (as seen on a 3.10.8 broker).

    A message's first death gets a new entry (count, reason, queue, time, exchange, routing-keys and,
    if it had a per-message TTL, original-expiration) and the ``x-first-death-*`` headers. A message
    that arrived with an ``x-death`` list (from here or another client) gets no ``x-first-death-*``:
    the entry of the same queue and reason has its count raised (its other fields kept) and moves
    first, or a new entry goes first, and every entry has its keys sorted. An ``x-death`` that is not a
    list is replaced by the new entry alone, again with no ``x-first-death-*``. Dead-lettering writes
    the headers table back with its keys sorted.
    """
    entry: dict[str, Any] = {"count": 1, "reason": reason, "queue": queue, "time": at, "exchange": exchange,
                             "routing-keys": routing_keys}  # fmt: skip
    if expiration is not None:
        entry["original-expiration"] = expiration
    earlier = headers.get("x-death")
    changed = dict(headers)
    if "x-death" not in headers:
        changed.update({"x-death": [entry], "x-first-death-exchange": exchange,
                        "x-first-death-queue": queue, "x-first-death-reason": reason})  # fmt: skip
    elif not isinstance(earlier, list):
        changed["x-death"] = [entry]
    else:
        deaths = [{"count": 1, **d} if isinstance(d, dict) else d for d in earlier]
        for death in deaths:
            if isinstance(death, dict) and death.get("queue") == queue and death.get("reason") == reason:
                deaths.remove(death)
                entry = {**death, "count": int(death["count"]) + 1}
                break
        changed["x-death"] = [dict(sorted(d.items())) if isinstance(d, dict) else d for d in (entry, *deaths)]
    return dict(sorted(changed.items()))


def _is_cycle(queue: str, headers: dict[str, Any]) -> bool:
    """Whether dead-lettering into ``queue`` closes a loop of deaths none of which was a reject."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return False
    for number, death in enumerate(deaths):
        if isinstance(death, dict) and death.get("queue") == queue:
            loop = deaths[: number + 1]
            return all(isinstance(d, dict) and d.get("reason") != "rejected" for d in loop)
    return False


def _over_the_wire(props: Properties, body_size: int) -> Properties:
    """``props`` as the receiving client decodes them, after pamqp encoded them for the wire.

    The same encoder as a real connection's: what AMQP cannot carry (a tuple, ``bytes``, a set, an
    integer over 64 bits) raises the client's ``TypeError``, and a float arrives as the 32-bit float
    pamqp sends.
    """
    _, _, header = amqp_frame.unmarshal(amqp_frame.marshal(ContentHeader(0, body_size, props), 1))
    if not isinstance(header, ContentHeader):  # pamqp hands back the frame it was given
        raise TypeError(f"pamqp decoded a {type(header).__name__}, not a content header")
    return header.properties


def _arguments_over_the_wire(arguments: Arguments | None) -> dict[str, Any]:
    """A declare's arguments as RabbitMQ receives them (pamqp's field-table encoding)."""
    if not arguments:
        return {}
    _, decoded = amqp_decode.field_table(amqp_encode.field_table(dict(arguments)))
    return decoded


# The queue arguments RabbitMQ 3.10 compares when a classic queue is declared again (checked on a
# 3.10.8 broker); any other (x-note, x-delivery-limit, ...) is accepted and ignored, the first kept.
_COMPARED_QUEUE_ARGUMENTS = (
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-length",
    "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode", "x-queue-version",
    "x-single-active-consumer", "x-queue-master-locator", "x-queue-type",
)  # fmt: skip


def _inequivalent(current: dict[str, Any], received: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first argument of ``keys`` that differs, as RabbitMQ compares them; None if they agree."""
    for key in keys:
        was, now = current.get(key), received.get(key)
        if key == "x-queue-type":  # no type is the classic type
            was, now = was or "classic", now or "classic"
        # Integers of any width are one type to RabbitMQ; 1000 and "1000" are not.
        if was != now or type(was) is not type(now):
            return f"inequivalent arg '{key}': received {now!r} but current is {was!r}"
    return None


def _strings(value: Any) -> list[str]:
    return (
        [v.decode() if isinstance(v, bytes) else str(v) for v in value]
        if isinstance(value, list | tuple)
        else []
    )


def _with(props: Properties, **changes: Any) -> Properties:
    fields = {name: getattr(props, name) for name in (
        "content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
        "reply_to", "expiration", "message_id", "timestamp", "message_type", "user_id", "app_id",
    )}  # fmt: skip
    fields.update(changes)
    return Properties(**fields)


class _Connection:
    """A connection to the in-memory broker: :class:`event.driver.Connection`, as event.amqp's is."""

    _numbers = itertools.count(1)

    def __init__(self, broker: TestBroker, url: str, name: str) -> None:
        self.broker = broker
        self.name = name
        self._node = redact_url(url)
        self._closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.channels: list[_Channel] = []

    @property
    def is_closed(self) -> bool:
        return self._closing.done()

    @property
    def closing(self) -> asyncio.Future[None]:
        return self._closing

    @property
    def node(self) -> str:
        return self._node

    @property
    def blocked(self) -> str | None:
        return None  # no memory alarms here

    @property
    def server_properties(self) -> dict[str, Any]:
        # The version whose features it plays where they differ (the delayed retry of a quorum queue).
        return {"product": "RabbitMQ (event.testing.TestBroker)", "version": "4.3.0"}

    async def channel(self, *, confirms: bool = False) -> _Channel:
        if self.is_closed:
            raise driver.ChannelInvalidState(f"connection {self.name!r} is closed")
        channel = _Channel(self, next(self._numbers))
        self.channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in list(self.channels):
            await channel.close()
        for queue in [q for q in self.broker.queues.values() if q.exclusive_owner is self]:
            del self.broker.queues[queue.name]
        if not self._closing.done():
            self._closing.set_result(None)


class _Channel:
    """A channel of the in-memory broker: :class:`event.driver.Channel`, as event.amqp's is.

    Publisher confirms are always positive here (no nacks are emulated), so a channel in confirm mode
    behaves as one without."""

    def __init__(self, connection: _Connection, number: int) -> None:
        self.connection = connection
        self.broker = connection.broker
        self._number = number
        self.prefetch = 0
        self.unacked: dict[int, tuple[_Queue, _Message]] = {}
        self.next_tag = 1
        self.closed = False
        self._closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Nobody may be watching a channel's end: retrieve its exception so asyncio does not warn.
        self._closing.add_done_callback(lambda done: done.cancelled() or done.exception())

    @property
    def number(self) -> int:
        return self._number

    @property
    def is_closed(self) -> bool:
        return self.closed or self.connection.is_closed

    @property
    def closing(self) -> asyncio.Future[None]:
        return self._closing

    def has_room(self) -> bool:
        return not self.is_closed and (self.prefetch == 0 or len(self.unacked) < self.prefetch)

    def take(self, queue: _Queue, message: _Message) -> int:
        tag, self.next_tag = self.next_tag, self.next_tag + 1
        self.unacked[tag] = (queue, message)
        return tag

    def _broken(self, reply_code: int, reply_text: str) -> driver.ChannelClosed:
        """The broker closes the channel for an error: what it says, set on :attr:`closing`."""
        exc = driver.channel_closed(reply_code, reply_text)
        self.closed = True
        self._requeue_all()
        if not self._closing.done():
            self._closing.set_exception(exc)
        return exc

    def _open(self) -> None:
        if self.is_closed:
            raise driver.ChannelInvalidState(f"channel {self._number} is closed")

    async def basic_qos(self, prefetch_count: int) -> None:
        self._open()
        self.prefetch = prefetch_count

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
    ) -> None:
        self._open()
        received = _arguments_over_the_wire(arguments)
        existing = self.broker.exchanges.get(exchange)
        if passive:
            if existing is None:
                raise self._broken(404, f"NOT_FOUND - no exchange '{exchange}' in vhost '/'")
            return
        if existing is not None:
            # RabbitMQ compares the type, durability and alternate exchange; other arguments it ignores.
            differs = _inequivalent(
                {"type": existing.kind, "durable": existing.durable},
                {"type": exchange_type, "durable": durable},
                ("type", "durable"),
            ) or _inequivalent(existing.arguments, received, ("alternate-exchange",))
            if differs is not None:
                raise self._broken(406, f"PRECONDITION_FAILED - {differs} for exchange '{exchange}'")
            return
        self.broker.exchanges[exchange] = _Exchange(exchange_type, durable, received)

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        self._open()
        self.broker.exchanges.pop(exchange, None)
        self.broker.bindings.pop(exchange, None)
        self.broker.header_bindings.pop(exchange, None)
        self.broker.exchange_bindings.pop(exchange, None)

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Arguments | None = None,
    ) -> QueueInfo:
        self._open()
        queue = queue or f"amq.gen-{uuid.uuid4().hex}"  # a server-named queue, as RabbitMQ names them
        received = _arguments_over_the_wire(arguments)
        existing = self.broker.queues.get(queue)
        if passive:
            if existing is None:
                raise self._broken(404, f"NOT_FOUND - no queue '{queue}' in vhost '/'")
            return QueueInfo(queue, len(existing.messages), len(existing.consumers))
        if existing is not None:
            if existing.exclusive_owner is not None and existing.exclusive_owner is not self.connection:
                raise self._broken(405, f"RESOURCE_LOCKED - queue '{queue}' is exclusive")
            flags = ("durable", "auto_delete")
            differs = _inequivalent(
                {"durable": existing.durable, "auto_delete": existing.auto_delete},
                {"durable": durable, "auto_delete": auto_delete},
                flags,
            ) or _inequivalent(existing.arguments, received, _COMPARED_QUEUE_ARGUMENTS)
            if differs is not None:
                raise self._broken(406, f"PRECONDITION_FAILED - {differs} for queue '{queue}'")
            return QueueInfo(queue, len(existing.messages), len(existing.consumers))
        owner = self.connection if exclusive else None
        _warn_not_emulated(queue, received)
        self.broker.queues[queue] = _Queue(queue, durable, owner, received, auto_delete)
        return QueueInfo(queue, 0, 0)

    async def exchange_bind(
        self, destination: str, source: str, routing_key: str = "", arguments: Arguments | None = None
    ) -> None:
        self._open()
        if destination not in self.broker.exchanges or source not in self.broker.exchanges:
            raise self._broken(404, f"NOT_FOUND - no exchange '{source}' or '{destination}'")
        binding = (destination, routing_key, dict(arguments or {}))
        bound = self.broker.exchange_bindings.setdefault(source, [])
        if binding not in bound:
            bound.append(binding)

    async def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: Arguments | None = None
    ) -> None:
        self._open()
        if exchange not in self.broker.exchanges or queue not in self.broker.queues:
            raise self._broken(404, f"NOT_FOUND - no exchange '{exchange}' or queue '{queue}'")
        if self.broker.exchanges[exchange].kind == "headers":
            with_arguments = (queue, dict(arguments or {}))
            headed = self.broker.header_bindings.setdefault(exchange, [])
            if with_arguments not in headed:
                headed.append(with_arguments)
            return
        binding = (queue, routing_key)
        bound = self.broker.bindings.setdefault(exchange, [])
        if binding not in bound:
            bound.append(binding)

    async def queue_unbind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: Arguments | None = None
    ) -> None:
        self._open()
        bound = self.broker.bindings.get(exchange, [])
        if (queue, routing_key) in bound:
            bound.remove((queue, routing_key))

    async def queue_delete(self, queue: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        self._open()
        found = self.broker.queues.pop(queue, None)
        loop = asyncio.get_running_loop()
        for consumer in found.consumers if found is not None else ():
            if consumer.on_cancel is not None:  # RabbitMQ tells a deleted queue's consumers (Basic.Cancel)
                loop.call_soon(consumer.on_cancel, consumer.tag)
        for bound in self.broker.bindings.values():
            bound[:] = [b for b in bound if b[0] != queue]
        for headed in self.broker.header_bindings.values():
            headed[:] = [b for b in headed if b[0] != queue]
        return 0 if found is None else len(found.messages)

    async def queue_purge(self, queue: str) -> int:
        self._open()
        found = self.broker.queues.get(queue)
        if found is None:
            raise self._broken(404, f"NOT_FOUND - no queue '{queue}' in vhost '/'")
        count = len(found.messages)
        found.messages.clear()
        return count

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
        self._open()
        found = self.broker.queues.get(queue)
        if found is None:
            raise self._broken(404, f"NOT_FOUND - no queue '{queue}' in vhost '/'")
        tag = consumer_tag or f"ctag{self._number}.{len(found.consumers)}"
        found.consumers.append(_Subscription(self, tag, on_delivery, on_cancel, no_ack))
        self.broker._deliver(found)
        return tag

    async def basic_cancel(self, consumer_tag: str) -> None:
        self._open()
        for queue in self.broker.queues.values():
            queue.consumers = [c for c in queue.consumers if c.tag != consumer_tag]

    async def basic_get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        self._open()
        found = self.broker.queues.get(queue)
        if found is None:
            raise self._broken(404, f"NOT_FOUND - no queue '{queue}' in vhost '/'")
        self.broker._expire_head(found)
        if not found.messages:
            return None
        message = found.messages.popleft()
        tag = 0 if no_ack else self.take(found, message)
        return Delivery(
            tag,
            message.redelivered,
            message.exchange,
            message.routing_key,
            message.props,
            message.body,
            message_count=len(found.messages),
        )

    def _settle(self, tag: int, multiple: bool) -> list[tuple[_Queue, _Message]]:
        self._open()
        if not multiple and tag not in self.unacked:
            # As RabbitMQ does: the channel is closed (no answer to the settle itself, the close comes
            # through ``closing``), and its other unacked messages go back to their queues.
            self._broken(406, f"PRECONDITION_FAILED - unknown delivery tag {tag}")
            return []
        tags = [t for t in self.unacked if t <= tag] if multiple else [tag]
        return [self.unacked.pop(t) for t in tags]

    def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        queues = {q.name: q for q, _ in self._settle(delivery_tag, multiple)}
        for queue in queues.values():
            self.broker._deliver(queue)

    def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        self.basic_nack(delivery_tag, requeue=requeue)

    def basic_nack(self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True) -> None:
        settled = self._settle(delivery_tag, multiple)
        for queue, message in reversed(settled):
            if requeue and "x-delayed-retry-type" in queue.arguments:
                self._retry_later(queue, message)
            elif requeue:
                message.redelivered = True
                _put(queue, message, at_head=True)
        if not requeue:
            for queue, message in settled:
                self.broker._dead_letter(queue, message, "rejected")
        for queue in {q.name: q for q, _ in settled}.values():
            self.broker._deliver(queue)

    def _retry_later(self, queue: _Queue, message: _Message) -> None:
        """RabbitMQ 4.3's delayed retry of a quorum queue (``x-delayed-retry-*``), on the virtual clock:
        the message's ``x-delivery-count`` rises, and it comes back after ``min * count`` ms, capped at
        ``max``; past ``x-delivery-limit`` it is dead-lettered instead. (4.3 counts a nack too, unlike
        a reject, only for its retry; here both count.)"""
        headers = dict(message.props.headers or {})
        count = (wire.header_int(headers, "x-delivery-count") or 0) + 1
        headers["x-delivery-count"] = headers["x-acquired-count"] = count
        message.props = copy.copy(message.props)  # another queue's copy may share it
        message.props.headers = headers
        message.redelivered = True
        limit = queue.arguments.get("x-delivery-limit")
        if limit is not None and count > int(limit):
            self.broker._dead_letter(queue, message, "delivery_limit")
            return
        low = int(queue.arguments.get("x-delayed-retry-min", 0))
        delay_ms = min(low * count, int(queue.arguments.get("x-delayed-retry-max", low * count)))
        broker = self.broker

        async def later() -> None:
            await broker.clock.sleep(delay_ms / 1000)
            queue.messages.append(message)
            broker._deliver(queue)

        task = asyncio.get_running_loop().create_task(later())
        broker._retrying.add(task)
        task.add_done_callback(broker._retrying.discard)

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
        mandatory: bool = False,
        timeout: float | None = None,  # never reached: a publish here is confirmed, or fails, at once
    ) -> None:
        self._open()
        # Encoded and decoded as on a real connection: what the client cannot encode raises here, on
        # an open channel, and nothing is published.
        props = _over_the_wire(properties or Properties(), len(body))
        try:
            targets = self.broker.publish(exchange, routing_key, body, props)
        except driver.ChannelClosed as exc:
            raise self._broken(exc.reply_code, exc.reply_text) from None
        if mandatory and not targets:
            raise driver.Returned(driver.ReturnedMessage(312, "NO_ROUTE", exchange, routing_key, props, body))

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._requeue_all()
        if not self._closing.done():
            self._closing.set_result(None)

    def _requeue_all(self) -> None:
        for queue in self.broker.queues.values():
            queue.consumers = [c for c in queue.consumers if c.channel is not self]
        for queue, message in reversed(list(self.unacked.values())):  # back at the head, in their order
            message.redelivered = True
            _put(queue, message, at_head=True)
        touched = {q.name: q for q, _ in self.unacked.values()}
        self.unacked.clear()
        for queue in touched.values():
            self.broker._deliver(queue)


if TYPE_CHECKING:  # both play the driver seam's part, checked here rather than by a type: ignore
    _connection_is_one: type[driver.Connection] = _Connection
    _channel_is_one: type[driver.Channel] = _Channel


__all__ = ["NotEmulatedWarning", "Published", "TestBroker", "VirtualClock"]
