"""An in-memory RabbitMQ for users' unit tests: routing, delays on a virtual clock, retries, dead queue.

::

    async with TestBroker(pool, publisher) as broker:
        await publisher.publish("app.send_email", {"to": "a@b.c"})
        await broker.drain()                       # every handler has run
        await publisher.publish_in(60, "app.remind", {})
        await broker.advance(60)                   # a minute passes, at once
        assert broker.published("app.remind") == [{}]
        assert broker.dead() == []

It plays the broker's part of AMQP that `event` uses, the way RabbitMQ plays it: topic, direct and
default exchanges, ``CC`` routing, per-message and per-queue TTL with dead-lettering and ``x-death``,
``x-max-length``, exclusive queues, prefetch, acks, rejects and redelivery. The project runs one
scenario suite against it and against RabbitMQ (``tests/integration/test_scenarios.py``): a difference
is a bug here. It does not emulate connection failures, publisher nacks or memory alarms.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import orjson
from aiormq import exceptions as amqp_errors
from aiormq import spec
from aiormq.abc import DeliveredMessage
from pamqp.header import ContentHeader

from event import wire
from event.connection import Connection
from event.pool import WorkerPool
from event.publisher import Publisher


@dataclass
class _Message:
    body: bytes
    props: spec.Basic.Properties
    exchange: str
    routing_key: str
    expires_at: float | None = None
    redelivered: bool = False


@dataclass
class _Queue:
    name: str
    durable: bool
    exclusive_owner: _Connection | None
    arguments: dict[str, Any]
    messages: deque[_Message] = field(default_factory=deque)
    consumers: list[tuple[_Channel, str, Callable[[DeliveredMessage], Awaitable[Any]]]] = field(
        default_factory=list
    )
    turn: int = 0


@dataclass
class Published:
    """One publish the broker accepted."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]

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
        """The body, decoded."""
        return orjson.loads(self.body)


class TestBroker:
    """An in-memory broker that the given pools and publishers connect to instead of RabbitMQ."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, *clients: WorkerPool | Publisher, start: float = 1_800_000_000.0) -> None:
        self.clients = clients
        self.now = start  # the virtual clock, in epoch seconds
        self.exchanges: dict[str, str] = {"": "direct"}
        self.bindings: dict[str, list[tuple[str, str]]] = {}  # exchange -> [(queue, key)]
        self.queues: dict[str, _Queue] = {}
        self.log: list[Published] = []
        self._saved: list[tuple[Any, Any, Any]] = []
        self._running: list[AsyncExitStack] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- the user's side ----------------------------------------------------------------------------------

    def clock(self) -> float:
        """The virtual time, in epoch seconds."""
        return self.now

    async def __aenter__(self) -> Self:
        for client in self.clients:
            self._saved.append((client, client.connector, getattr(client, "clock", None)))
            client.connector = self.connect
            if isinstance(client, WorkerPool):
                client.clock = self.clock
            else:
                client._clock = self.clock
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
        for stack in self._running:
            await stack.__aexit__(exc_type, exc, tb)
        for client, connector, clock in self._saved:
            client.connector = connector
            if isinstance(client, WorkerPool):
                client.clock = clock
            elif clock is not None:
                client._clock = clock

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until no consumer has a message waiting or in its hands (delayed ones excepted)."""
        async with asyncio.timeout(timeout):
            while True:
                for _ in range(5):
                    await asyncio.sleep(0)
                await asyncio.sleep(0.001)
                busy = any(
                    q.consumers and (q.messages or any(ch.unacked for ch, _, _ in q.consumers))
                    for q in self.queues.values()
                )
                pools_busy = any(
                    d.tasks for c in self.clients if isinstance(c, WorkerPool) for d in c._dispatchers
                )
                if not busy and not pools_busy and not self._tasks:
                    await asyncio.sleep(0.01)  # acks flush on a short timer
                    if not any(ch.unacked for q in self.queues.values() for ch, _, _ in q.consumers):
                        return

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass: expire what is due, in order, handling it as it comes."""
        target = self.now + seconds
        while True:
            await self.drain()
            due = [
                (m.expires_at, q.name)
                for q in self.queues.values()
                if q.messages and (m := q.messages[0]).expires_at is not None and m.expires_at <= target
            ]
            if not due:
                break
            at, _ = min(due)
            self.now = max(self.now, at)
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
            Published(m.exchange, m.routing_key, m.body, dict(m.props.headers or {}))
            for q in self.queues.values()
            if q.name.endswith("_dead_queue")
            for m in q.messages
        ]

    # --- the broker's side ---------------------------------------------------------------------------------

    async def connect(self, url: str, *, name: str) -> Connection:
        """What a client's ``connector`` calls."""
        return _Connection(self, name)  # type: ignore[return-value]

    def route(self, exchange: str, routing_key: str, headers: dict[str, Any]) -> list[str]:
        keys = [routing_key, *_strings(headers.get("CC")), *_strings(headers.get("BCC"))]
        if exchange == "":
            return list(dict.fromkeys(k for k in keys if k in self.queues))
        kind = self.exchanges[exchange]
        found: dict[str, None] = {}
        for queue, pattern in self.bindings.get(exchange, []):
            if any((wire.topic_matches(pattern, k) if kind == "topic" else pattern == k) for k in keys):
                found[queue] = None
        return list(found)

    def publish(
        self, exchange: str, routing_key: str, body: bytes, props: spec.Basic.Properties
    ) -> list[str]:
        if exchange not in self.exchanges:
            raise amqp_errors.ChannelNotFoundEntity(f"NOT_FOUND - no exchange '{exchange}'")
        headers = dict(props.headers or {})
        targets = self.route(exchange, routing_key, headers)
        headers.pop("BCC", None)
        self.log.append(Published(exchange, routing_key, body, headers))
        for name in targets:
            self._enqueue(
                self.queues[name], _Message(body, _with(props, headers=headers), exchange, routing_key)
            )
        return targets

    def _enqueue(self, queue: _Queue, message: _Message) -> None:
        ttl = message.props.expiration or queue.arguments.get("x-message-ttl")
        message.expires_at = self.now + int(ttl) / 1000 if ttl is not None else None
        queue.messages.append(message)
        limit = queue.arguments.get("x-max-length")
        while limit is not None and len(queue.messages) > limit:
            queue.messages.popleft()  # RabbitMQ drops the oldest (this emulation has no overflow DLX)
        self._deliver(queue)

    def _expire(self) -> None:
        for queue in list(self.queues.values()):
            while (
                queue.messages
                and (m := queue.messages[0]).expires_at is not None
                and m.expires_at <= self.now
            ):
                queue.messages.popleft()
                target = queue.arguments.get("x-dead-letter-exchange")
                if target is not None:
                    self._dead_letter(queue, m, target)

    def _dead_letter(self, queue: _Queue, message: _Message, exchange: str) -> None:
        headers: dict[str, Any] = dict(message.props.headers or {})
        keys = [message.routing_key, *_strings(headers.get("CC"))]
        earlier: Any = headers.get("x-death") or []
        deaths = [dict(d) for d in earlier]
        for death in deaths:
            if death.get("queue") == queue.name and death.get("reason") == "expired":
                death["count"] = death.get("count", 1) + 1
                deaths.remove(death)
                deaths.insert(0, death)
                break
        else:
            deaths.insert(0, {"count": 1, "reason": "expired", "queue": queue.name,
                              "exchange": message.exchange, "routing-keys": keys})  # fmt: skip
            headers.setdefault("x-first-death-exchange", message.exchange)
            headers.setdefault("x-first-death-queue", queue.name)
            headers.setdefault("x-first-death-reason", "expired")
        headers["x-death"] = deaths
        props = _with(message.props, headers=headers, expiration=None)
        for name in self.route(exchange, message.routing_key, headers):
            self._enqueue(self.queues[name], _Message(message.body, props, exchange, message.routing_key))

    def _deliver(self, queue: _Queue) -> None:
        while queue.messages and queue.consumers:
            ready = [c for c in queue.consumers if c[0].has_room()]
            if not ready:
                return
            channel, tag, callback = ready[queue.turn % len(ready)]
            queue.turn += 1
            message = queue.messages.popleft()
            delivery_tag = channel.take(queue, message)
            if tag in channel.no_ack_tags:
                channel.unacked.pop(delivery_tag)  # settled on delivery, as no_ack asks
            delivered = DeliveredMessage(
                delivery=spec.Basic.Deliver(
                    tag, delivery_tag, message.redelivered, message.exchange, message.routing_key
                ),
                header=ContentHeader(properties=message.props, body_size=len(message.body)),
                body=message.body,
                channel=channel,  # type: ignore[arg-type]
            )
            task = asyncio.ensure_future(callback(delivered))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def _strings(value: Any) -> list[str]:
    return (
        [v.decode() if isinstance(v, bytes) else str(v) for v in value]
        if isinstance(value, list | tuple)
        else []
    )


def _with(props: spec.Basic.Properties, **changes: Any) -> spec.Basic.Properties:
    fields = {name: getattr(props, name) for name in (
        "content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
        "reply_to", "expiration", "message_id", "timestamp", "message_type", "user_id", "app_id",
    )}  # fmt: skip
    fields.update(changes)
    return spec.Basic.Properties(**fields)


class _Connection:
    """The part of aiormq's Connection that `event` uses."""

    _numbers = itertools.count(1)

    def __init__(self, broker: TestBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.closing: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.channels: list[_Channel] = []

    @property
    def is_closed(self) -> bool:
        return self.closing.done()

    async def channel(self, publisher_confirms: bool = True, **_: Any) -> _Channel:
        channel = _Channel(self, next(self._numbers))
        self.channels.append(channel)
        return channel

    async def close(self, *_: Any, **__: Any) -> None:
        for channel in list(self.channels):
            await channel.close()
        for queue in [q for q in self.broker.queues.values() if q.exclusive_owner is self]:
            del self.broker.queues[queue.name]
        if not self.closing.done():
            self.closing.set_result(None)


class _Channel:
    """The part of aiormq's Channel that `event` uses."""

    def __init__(self, connection: _Connection, number: int) -> None:
        self.connection = connection
        self.broker = connection.broker
        self.number = number
        self.prefetch = 0
        self.unacked: dict[int, tuple[_Queue, _Message]] = {}
        self.no_ack_tags: set[str] = set()
        self.next_tag = 1
        self.closed = False

    @property
    def is_closed(self) -> bool:
        return self.closed or self.connection.is_closed

    def has_room(self) -> bool:
        return not self.is_closed and (self.prefetch == 0 or len(self.unacked) < self.prefetch)

    def take(self, queue: _Queue, message: _Message) -> int:
        tag, self.next_tag = self.next_tag, self.next_tag + 1
        self.unacked[tag] = (queue, message)
        return tag

    def _fail(self, exc: amqp_errors.ChannelClosed) -> None:
        self.closed = True
        self._requeue_all()
        raise exc

    def _open(self) -> None:
        if self.is_closed:
            raise amqp_errors.ChannelInvalidStateError(f"channel {self.number} is closed")

    async def basic_qos(self, prefetch_count: int = 0, **_: Any) -> None:
        self.prefetch = prefetch_count

    async def exchange_declare(self, exchange: str, exchange_type: str = "direct", **_: Any) -> None:
        self._open()
        existing = self.broker.exchanges.get(exchange)
        if existing is not None and existing != exchange_type:
            self._fail(amqp_errors.ChannelPreconditionFailed(
                f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{exchange}': received "
                f"'{exchange_type}' but current is '{existing}'"))  # fmt: skip
        self.broker.exchanges[exchange] = exchange_type

    async def exchange_delete(self, exchange: str, **_: Any) -> None:
        self.broker.exchanges.pop(exchange, None)
        self.broker.bindings.pop(exchange, None)

    async def queue_declare(
        self,
        queue: str,
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        **_: Any,
    ) -> spec.Queue.DeclareOk:
        self._open()
        queue = queue or f"amq.gen-{uuid.uuid4().hex}"  # a server-named queue, as RabbitMQ names them
        existing = self.broker.queues.get(queue)
        if passive:
            if existing is None:
                self._fail(amqp_errors.ChannelNotFoundEntity(f"NOT_FOUND - no queue '{queue}'"))
            assert existing is not None
            return spec.Queue.DeclareOk(queue, len(existing.messages), len(existing.consumers))
        if existing is not None:
            if existing.exclusive_owner is not None and existing.exclusive_owner is not self.connection:
                self._fail(
                    amqp_errors.ChannelLockedResource(f"RESOURCE_LOCKED - queue '{queue}' is exclusive")
                )
            if existing.arguments != dict(arguments or {}):
                self._fail(amqp_errors.ChannelPreconditionFailed(
                    f"PRECONDITION_FAILED - inequivalent arguments for queue '{queue}': received "
                    f"{dict(arguments or {})!r} but current is {existing.arguments!r}"))  # fmt: skip
            return spec.Queue.DeclareOk(queue, len(existing.messages), len(existing.consumers))
        owner = self.connection if exclusive else None
        self.broker.queues[queue] = _Queue(queue, durable, owner, dict(arguments or {}))
        return spec.Queue.DeclareOk(queue, 0, 0)

    async def queue_bind(self, queue: str, exchange: str, routing_key: str = "", **_: Any) -> None:
        self._open()
        if exchange not in self.broker.exchanges or queue not in self.broker.queues:
            self._fail(
                amqp_errors.ChannelNotFoundEntity(f"NOT_FOUND - no exchange '{exchange}' or queue '{queue}'")
            )
        binding = (queue, routing_key)
        bound = self.broker.bindings.setdefault(exchange, [])
        if binding not in bound:
            bound.append(binding)

    async def queue_unbind(self, queue: str, exchange: str, routing_key: str = "", **_: Any) -> None:
        bound = self.broker.bindings.get(exchange, [])
        if (queue, routing_key) in bound:
            bound.remove((queue, routing_key))

    async def queue_delete(self, queue: str, **_: Any) -> None:
        self.broker.queues.pop(queue, None)
        for bound in self.broker.bindings.values():
            bound[:] = [b for b in bound if b[0] != queue]

    async def queue_purge(self, queue: str, **_: Any) -> spec.Queue.PurgeOk:
        found = self.broker.queues[queue]
        count = len(found.messages)
        found.messages.clear()
        return spec.Queue.PurgeOk(count)

    async def basic_consume(
        self,
        queue: str,
        consumer_callback: Callable[[DeliveredMessage], Awaitable[Any]],
        *,
        consumer_tag: str | None = None,
        no_ack: bool = False,
        **_: Any,
    ) -> spec.Basic.ConsumeOk:
        self._open()
        found = self.broker.queues.get(queue)
        if found is None:
            self._fail(amqp_errors.ChannelNotFoundEntity(f"NOT_FOUND - no queue '{queue}'"))
        assert found is not None
        tag = consumer_tag or f"ctag{self.number}.{len(found.consumers)}"
        if no_ack:
            self.no_ack_tags.add(tag)
        found.consumers.append((self, tag, consumer_callback))
        self.broker._deliver(found)
        return spec.Basic.ConsumeOk(tag)

    async def basic_cancel(self, consumer_tag: str, **_: Any) -> None:
        for queue in self.broker.queues.values():
            queue.consumers = [c for c in queue.consumers if c[1] != consumer_tag]

    async def basic_get(self, queue: str, no_ack: bool = False, **_: Any) -> DeliveredMessage:
        found = self.broker.queues[queue]
        if not found.messages:
            return DeliveredMessage(spec.Basic.GetEmpty(), ContentHeader(), b"", self)  # type: ignore[arg-type]
        message = found.messages.popleft()
        tag = 0 if no_ack else self.take(found, message)
        return DeliveredMessage(
            spec.Basic.GetOk(
                tag, message.redelivered, message.exchange, message.routing_key, len(found.messages)
            ),
            ContentHeader(properties=message.props, body_size=len(message.body)),
            message.body,
            self,  # type: ignore[arg-type]
        )

    def _settle(self, tag: int, multiple: bool) -> list[tuple[_Queue, _Message]]:
        self._open()
        tags = [t for t in self.unacked if t <= tag] if multiple else [tag]
        if not multiple and tag not in self.unacked:
            self._fail(
                amqp_errors.ChannelPreconditionFailed(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
            )
        return [self.unacked.pop(t) for t in tags]

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, **_: Any) -> None:
        queues = {q.name: q for q, _ in self._settle(delivery_tag, multiple)}
        for queue in queues.values():
            self.broker._deliver(queue)

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True, **_: Any) -> None:
        await self.basic_nack(delivery_tag, requeue=requeue)

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, **_: Any
    ) -> None:
        settled = self._settle(delivery_tag, multiple)
        for queue, message in reversed(settled):
            if requeue:
                message.redelivered = True
                queue.messages.appendleft(message)
        for queue in {q.name: q for q, _ in settled}.values():
            self.broker._deliver(queue)

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: spec.Basic.Properties | None = None,
        mandatory: bool = False,
        **_: Any,
    ) -> spec.Basic.Ack:
        self._open()
        props = properties or spec.Basic.Properties()
        try:
            targets = self.broker.publish(exchange, routing_key, body, props)
        except amqp_errors.ChannelNotFoundEntity as exc:
            self._fail(exc)
        if mandatory and not targets:
            returned = DeliveredMessage(
                spec.Basic.Return(312, "NO_ROUTE", exchange, routing_key),
                ContentHeader(properties=props, body_size=len(body)),
                body,
                self,  # type: ignore[arg-type]
            )
            raise amqp_errors.PublishError(returned, returned.delivery)
        return spec.Basic.Ack()

    async def close(self, *_: Any, **__: Any) -> None:
        if not self.closed:
            self.closed = True
            self._requeue_all()

    def _requeue_all(self) -> None:
        for queue in self.broker.queues.values():
            queue.consumers = [c for c in queue.consumers if c[0] is not self]
        for queue, message in reversed(list(self.unacked.values())):  # back at the head, in their order
            message.redelivered = True
            queue.messages.appendleft(message)
        touched = {q.name: q for q, _ in self.unacked.values()}
        self.unacked.clear()
        for queue in touched.values():
            self.broker._deliver(queue)


__all__ = ["Published", "TestBroker"]
