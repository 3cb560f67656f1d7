"""The hot path: delivery -> decode -> middleware -> handler -> ack, or a confirmed dead copy then ack.

One :class:`Dispatcher` serves one consumer. It owns the consumer's concurrency limit and the tasks
running its handlers; the pool hands it a fresh :class:`AckTracker` whenever its channel is (re)opened.
Deliveries run eagerly (:mod:`event.eager`): a handler that finishes without suspending costs no task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from event import tracing, wire
from event.acks import AckTracker
from event.batching import Batcher
from event.consumer import Consumer
from event.driver import Delivery, Properties
from event.eager import EagerRunner, Slots
from event.errors import DecodeError, PayloadError
from event.message import DeadLetter, Message
from event.metrics import ConsumerStats
from event.middleware import Middleware, Step, compose
from event.ratelimit import RateLimiter
from event.retry import H_DELIVERY_COUNT, decide
from event.schedule_copies import ScheduleCopies
from event.sending import Sender, copy_properties
from event.signals import BatchFailed, Dead, Retry

log = logging.getLogger(__name__)

REQUEUE_PAUSE_S = 1.0


@dataclass(frozen=True, slots=True)
class _Gathered:
    """A message of a batch consumer, taken and decoded, waiting for its batch to run."""

    msg: Message[Any]
    delivered: Delivery
    tag: int
    acks: AckTracker
    routing_key: str
    failures: int


# Called once the dead copy is confirmed; it must not block (it runs on the hot path, before the ack).
OnDead = Callable[[DeadLetter], None]


class _CopyKind(NamedTuple):
    """What a copy that replaces a delivery is: its words in the log, its outcome in the metrics."""

    what: str
    outcome: str


_RETRY = _CopyKind("a retry", "retried")
_DEAD = _CopyKind("the dead queue", "dead")
_REPARK = _CopyKind("a re-park", "reparked")
_RECOUNT = _CopyKind("a counted copy", "recounted")


@dataclass(frozen=True, slots=True)
class _Copy:
    """A copy to store before its delivery is acked: what it is, where it goes, what it carries."""

    kind: _CopyKind
    exchange: str
    key: str  # its routing key: the queue's name when it goes straight to one
    props: Properties
    routing_key: str  # the event's own, the one its outcome is counted under


def _explicit_delay(error: BaseException) -> bool:
    """A ``Retry(in_=...)``: a delay the broker's retry cannot give, so it goes through a park queue."""
    return isinstance(error, Retry) and error.delay is not None


class HandlerAborted(Exception):
    """A sync handler's thread raised a BaseException (KeyboardInterrupt, SystemExit): the message failed."""


def decode(raw: bytes, content_type: str | None) -> Any:
    """The JSON body of a delivery; :class:`DecodeError` for another content type or invalid JSON."""
    if content_type and content_type != wire.CONTENT_TYPE:  # the usual one needs no parsing
        media = content_type.split(";", 1)[0].strip().lower()
        if media != wire.CONTENT_TYPE:
            raise DecodeError(f"content type {content_type!r} is not {wire.CONTENT_TYPE}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"body is not valid JSON ({exc}); it starts with {raw[:40]!r}") from exc


def _call_sync(
    handler: Callable[[Any, Message[Any]], Any], ctx: Any, msg: Message[Any]
) -> BaseException | None:
    # Runs in a worker thread. A BaseException escaping here would reach the event loop and stop the
    # worker, so it is handed back as a value and turned into an ordinary failure of this message.
    try:
        handler(ctx, msg)
    except BaseException as exc:
        return exc
    return None


def endpoint_for(consumer: Consumer, executor: Executor) -> Step:
    """The innermost step of the chain: the handler itself, in the loop or in the thread pool."""
    handler = consumer.handler
    if consumer.payload is not None and consumer.payload.as_argument:
        given = handler

        def with_payload(ctx: Any, msg: Message[Any]) -> Any:
            return given(ctx, msg, msg.body)

        handler = with_payload
    if consumer.is_async:
        return handler  # type: ignore[return-value]

    async def in_thread(ctx: Any, msg: Message[Any]) -> None:
        # In the caller's context (as asyncio.to_thread), so the handler's spans are the delivery's children.
        run = contextvars.copy_context().run
        error = await asyncio.get_running_loop().run_in_executor(executor, run, _call_sync, handler, ctx, msg)
        if error is None:
            return
        if isinstance(error, Exception):
            raise error
        raise HandlerAborted(f"handler raised {type(error).__name__}: {error}") from error

    return in_thread


class Dispatcher:
    """Runs one consumer's deliveries under its limits and settles each one exactly once."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        namespace: str,
        exchange: str,
        dead_queue: str,
        middleware: Sequence[Middleware],
        pool_slots: Slots | None,
        executor: Executor,
        pool_concurrency: int = 0,
        sender: Sender,
        clock: Callable[[], float] = time.time,
        stats: ConsumerStats | None = None,
        max_body_bytes: int = 0,
        on_dead: OnDead | None = None,
        schedule_copies: ScheduleCopies | None = None,
    ) -> None:
        self.consumer = consumer
        self.schedule_copies = schedule_copies  # which copy of a hutch-schedule message runs
        self.on_dead = on_dead
        self.namespace = namespace
        self.exchange = exchange
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.dead_queue = dead_queue
        self.chain = compose((*middleware, *consumer.middleware), endpoint_for(consumer, executor))
        self.limiter = RateLimiter(consumer.rate, clock) if consumer.rate is not None else None
        self.pool_slots = pool_slots
        self.sender = sender  # retry, re-park and dead copies: mandatory, each confirmed before the ack
        self.acks: AckTracker | None = None
        self.accepting = True
        # The consumer's own limit (max_concurrency) is the runner's: no more of its deliveries run at
        # once. Nor more than could hold a pool-wide slot: the rest wait in the runner's queue, not each
        # in a task blocked on a semaphore (with prefetch 4x the concurrency, most of them).
        limits = [n for n in (consumer.max_concurrency, pool_concurrency) if n]
        self._runner: EagerRunner[tuple[Delivery, AckTracker]] = EagerRunner(
            self._start, limit=min(limits, default=0)
        )
        self.running = 0  # handlers running now (for tests and metrics)
        self.stats = stats or ConsumerStats(consumer.queue, consumer.max_concurrency)
        self.stats.in_flight = lambda: self.running
        # The two counts every message adds to, held here: a dict add in place of a call each.
        self._received = self.stats.outcomes["received"]
        self._handled = self.stats.outcomes["handled"]
        self._suspect_running = False  # a counted copy (see _run_counted_copy) is running now
        # Deliveries being replaced by a copy here, done once the original's ack has gone out.
        self._replacing: set[asyncio.Future[None]] = set()
        self._broker_retry = consumer.retry == "broker"
        self._batcher: Batcher[_Gathered] | None = None
        if consumer.batch:
            self._batcher = Batcher(
                self._run_batch,
                size=consumer.batch,
                wait=consumer.batch_wait,
                limit=consumer.max_concurrency,
                accepting=lambda: self.accepting,
            )

    def attach(self, acks: AckTracker) -> None:
        """Use ``acks`` for the deliveries of a newly opened channel."""
        self.acks = acks

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """The tasks running this consumer's deliveries now (a shutdown waits for them, or cancels them)."""
        if self._batcher is not None:
            return self._runner.tasks | self._batcher.tasks
        return self._runner.tasks

    @property
    def in_hand(self) -> int:
        """Deliveries taken and not yet settled: waiting to start, for a slot or a rate, or running."""
        if self._batcher is not None:
            return self._runner.in_hand + self._batcher.in_hand
        return self._runner.in_hand

    def on_delivery(self, delivery: Delivery) -> None:
        """The driver's consumer callback, called in its read loop once per delivery, in order.

        The work runs in tasks of ours, not in the driver's callback, so that a handler running when the
        connection drops still finishes (its ack is dropped with the channel, and the broker redelivers
        the message).
        """
        acks = self.acks
        if acks is None:
            return
        acks.delivered(delivery.delivery_tag)
        self._runner.submit((delivery, acks))

    def _start(self, item: tuple[Delivery, AckTracker]) -> Coroutine[Any, Any, None]:
        # Which way a delivery goes, decided before its first coroutine: no frame of ours is resumed in
        # vain at each of a handler's awaits.
        delivered, acks = item
        tag = delivered.delivery_tag
        if delivered.redelivered and not self._broker_retry:  # the hot path's only extra test
            # (with broker retry, the broker counts every delivery that ended unacked itself)
            return self._redelivered(delivered, tag, acks)
        headers = delivered.properties.headers
        if not headers or wire.H_DELIVERIES not in headers:
            return self._run_limited(delivered, tag, acks)
        return self._run_counted_copy(delivered, tag, acks, headers)

    async def _run_counted_copy(
        self, delivered: Delivery, tag: int, acks: AckTracker, headers: dict[str, Any]
    ) -> None:
        # A counted copy: it was in a worker that died. One at a time per consumer, so that when it
        # kills this worker too, no other counted copy is held here and charged with it. One that
        # arrives meanwhile goes back to the tail of the queue, uncharged, instead of waiting here.
        if self._suspect_running:
            routing_key = wire.logical_routing_key("", headers, self.exchange)
            props = copy_properties(delivered.properties, headers, None)
            await self._replace(
                delivered, tag, acks, _Copy(_RECOUNT, "", self.consumer.queue, props, routing_key)
            )
            return
        self._suspect_running = True
        try:
            # Its original may be the one being replaced here: the broker can deliver the copy before
            # its confirm reaches us, and the ack of the original must be out before the copy runs.
            if self._replacing:  # those begun before it arrived; later ones cannot be its original
                await asyncio.wait(set(self._replacing))
            await self._run_limited(delivered, tag, acks)
        finally:
            self._suspect_running = False

    @tracing.traced_delivery  # a consumer span, when opentelemetry is installed
    async def _redelivered(self, delivered: Delivery, tag: int, acks: AckTracker) -> None:
        """A delivery whose previous one ended unsettled: replace it by a counted copy, or dead-queue it.

        A handler that kills the worker never raises, so only the count carried in the message tells
        that it was here before. Nothing runs now and no concurrency slot is taken: the copy, at the
        tail of this queue, runs when it comes back (with ``Message.redelivered`` true).
        """
        consumer = self.consumer
        props = delivered.properties
        headers: dict[str, Any] = props.headers or {}
        read = wire.read_headers(delivered.routing_key, headers, self.exchange)
        if read.addressed_queue is not None and read.addressed_queue != consumer.queue:
            acks.ack(tag)  # a retry meant for another queue, as in _process
            return
        routing_key = read.routing_key
        deliveries = wire.unsettled_deliveries(headers, redelivered=True)
        if wire.is_poison(deliveries, consumer.max_deliveries):
            log.error(
                "message %s (%s) in %s was delivered %d times and never settled: the worker likely died "
                "handling it; it goes to the dead queue %s",
                props.message_id, routing_key, consumer.queue, deliveries, self.dead_queue,
                extra={"message_id": props.message_id, "routing_key": routing_key, "queue": consumer.queue},
            )  # fmt: skip
            dead = wire.dead_headers(
                headers,
                routing_key=routing_key,
                queue=consumer.queue,
                error=wire.poison_error(deliveries, consumer.max_deliveries),
                failed_at_ms=int(self.clock() * 1000),
                failures=read.failures(consumer.routing_keys, consumer.queue),
            )
            dead[wire.H_DELIVERIES] = deliveries
            copy = _Copy(_DEAD, "", self.dead_queue, copy_properties(props, dead, None), routing_key)
            await self._replace(delivered, tag, acks, copy)
            return
        if not (self.accepting and acks.alive):
            return  # shutting down: left unacked, handed back
        counted = wire.recount_headers(headers, deliveries=deliveries, routing_key=routing_key)
        copy = _Copy(_RECOUNT, "", consumer.queue, copy_properties(props, counted, None), routing_key)
        await self._replace(delivered, tag, acks, copy)

    async def _replace(self, delivered: Delivery, tag: int, acks: AckTracker, copy: _Copy) -> None:
        """Like :meth:`_settle_with_copy`, but the ack goes out at once, alone.

        The copy may come back to this very worker within milliseconds; if it kills the worker while
        the original's ack still waits for its batch, the original is delivered again beside the
        copy, and a message that kills every worker would double with each crash.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._replacing.add(done)
        try:
            await self._settle_with_copy(delivered, tag, acks, copy, ack_at_once=True)
        finally:
            self._replacing.discard(done)
            done.set_result(None)

    async def _run_limited(self, delivered: Delivery, tag: int, acks: AckTracker) -> None:
        # The consumer's own limits first (its max_concurrency is the runner's; its rate is waited for
        # here), so that messages waiting for them never hold a pool-wide slot.
        if self.limiter is not None:
            await self.limiter.acquire()
        pool_slots = self.pool_slots
        if pool_slots is None:
            if self.accepting and acks.alive:
                await self._process(delivered, tag, acks)
            return
        if not pool_slots.try_take():
            await pool_slots.acquire()
        try:
            if self.accepting and acks.alive:
                # A delivery not started before shutdown stays unacked: the broker hands it back.
                await self._process(delivered, tag, acks)
        finally:
            pool_slots.release()

    @tracing.traced_delivery  # a consumer span, when opentelemetry is installed
    async def _process(self, delivered: Delivery, tag: int, acks: AckTracker) -> None:
        consumer = self.consumer
        props = delivered.properties
        headers: dict[str, Any] = props.headers or {}
        delivery_routing_key = delivered.routing_key
        if headers:
            read = wire.read_headers(delivery_routing_key, headers, self.exchange)
            if read.addressed_queue is not None and read.addressed_queue != consumer.queue:
                acks.ack(tag)  # an older retry meant for another queue, seen here through '#'
                return
            origin = read.schedule_origin
            copies = self.schedule_copies
            if (
                origin is not None
                and copies
                and not await copies.take(consumer.queue, origin, props.message_id)
            ):
                self.stats.count("duplicate", delivery_routing_key)
                acks.ack(tag)  # another namespace's copy of the same hutch-schedule publish runs
                return
            routing_key = read.routing_key
            due_in = read.due_in_ms(int(self.clock() * 1000))
            if due_in is not None and due_in > 1000:
                self.stats.count("received", routing_key)
                if due_in > wire.MAX_DELAY_MS:  # a wrong clock or client: parked for ever otherwise
                    failures = read.failures(consumer.routing_keys, consumer.queue)
                    far = PayloadError(wire.beyond_horizon(headers, due_in))
                    await self._failed(delivered, tag, acks, routing_key, failures, far)
                    return
                await self._park(delivered, tag, acks, routing_key, due_in / 1000)
                return
            failures = read.failures(consumer.routing_keys, consumer.queue)
            if self._broker_retry:
                # Every earlier delivery that ended unacked: our rejects, and a worker that died with
                # it. One past the retries already (deaths): dead now, not run again.
                failures += wire.header_int(headers, H_DELIVERY_COUNT) or 0
                if failures > consumer.retries:
                    exhausted = PayloadError(
                        f"{H_DELIVERY_COUNT} is {failures}: delivered {failures} times without success, "
                        f"past the {consumer.retries} retries (a worker likely died handling it)"
                    )
                    await self._failed(delivered, tag, acks, routing_key, failures, exhausted)
                    return
        else:  # the common case, a plain publish: every header rule has its default answer
            routing_key, failures = delivery_routing_key, 0
        received = self._received
        received[routing_key] = received.get(routing_key, 0) + 1
        try:
            if self.max_body_bytes and len(delivered.body) > self.max_body_bytes:
                raise PayloadError(
                    f"body of {len(delivered.body)} bytes is over the limit of {self.max_body_bytes}"
                )
            payload = consumer.payload
            if payload is not None and payload.load is not None:  # it reads the bytes (event.protobuf)
                body = payload.load(delivered.body, props.content_type)
            else:
                body = decode(delivered.body, props.content_type)
                if payload is not None:
                    body = payload.convert(body)
        except PayloadError as exc:
            await self._failed(delivered, tag, acks, routing_key, failures, exc)
            return
        msg: Message[Any] = Message(
            routing_key=routing_key,
            body=body,
            raw=delivered.body,
            headers=headers,
            message_id=props.message_id,
            timestamp=props.timestamp,
            attempt=failures + 1,
            redelivered=delivered.redelivered or wire.H_DELIVERIES in headers,
            queue=consumer.queue,
            delivery_routing_key=delivery_routing_key,
            exchange=delivered.exchange,
        )
        if self._batcher is not None:
            self._batcher.add(_Gathered(msg, delivered, tag, acks, routing_key, failures))
            return
        error: Exception | None = None
        started = time.perf_counter()
        self.running += 1
        try:
            ctx = consumer.context()
            if consumer.timeout is None:
                await self.chain(ctx, msg)
            else:
                async with asyncio.timeout(consumer.timeout):
                    await self.chain(ctx, msg)
        except Exception as exc:
            error = exc
        finally:
            self.running -= 1
            self.stats.durations.observe(time.perf_counter() - started)
        if error is not None:
            await self._failed(delivered, tag, acks, routing_key, failures, error)
            return
        handled = self._handled
        handled[routing_key] = handled.get(routing_key, 0) + 1
        acks.ack(tag)

    async def _run_batch(self, batch: list[_Gathered]) -> None:
        """One call of a batch consumer's handler with the messages gathered; each then settled."""
        batch = [item for item in batch if item.acks.alive]  # those of a channel gone come again
        if not batch:
            return
        consumer = self.consumer
        pool_slots = self.pool_slots
        if pool_slots is not None:
            await pool_slots.acquire()
        error: Exception | None = None
        started = time.perf_counter()
        self.running += len(batch)
        try:
            if not self.accepting:
                return  # shutting down: left unacked, handed back
            ctx = consumer.context()
            messages = [item.msg for item in batch]
            if consumer.timeout is None:
                await self.chain(ctx, messages)  # type: ignore[arg-type]
            else:
                async with asyncio.timeout(consumer.timeout):
                    await self.chain(ctx, messages)  # type: ignore[arg-type]
        except Exception as exc:
            error = exc
        finally:
            self.running -= len(batch)
            self.stats.durations.observe(time.perf_counter() - started)
            if pool_slots is not None:
                pool_slots.release()
        if error is None:
            for item in batch:
                self.stats.count("handled", item.routing_key)
                item.acks.ack(item.tag)
            return
        if isinstance(error, BatchFailed):
            failed = {id(msg) for msg in error.failed}
            cause: BaseException = error.error if error.error is not None else error
        else:
            failed, cause = {id(item.msg) for item in batch}, error
        settling = []
        for item in batch:
            if id(item.msg) in failed:
                settling.append(
                    self._failed(item.delivered, item.tag, item.acks, item.routing_key, item.failures, cause)
                )
            else:
                self.stats.count("handled", item.routing_key)
                item.acks.ack(item.tag)
        await asyncio.gather(*settling)

    async def _failed(
        self,
        delivered: Delivery,
        tag: int,
        acks: AckTracker,
        routing_key: str,
        failures: int,
        error: BaseException,
    ) -> None:
        consumer = self.consumer
        props = delivered.properties
        self.stats.count("failed", routing_key)
        tracing.failed(error)
        decision = decide(error, failures, consumer.retries, consumer.backoff)
        context = {
            "message_id": props.message_id,
            "routing_key": routing_key,
            "queue": consumer.queue,
            "attempt": failures + 1,
        }
        traceback = error if not isinstance(error, PayloadError | Dead | Retry) else None
        if decision.delay is not None and self._broker_retry and not _explicit_delay(error):
            # The broker waits before it delivers it again (x-delayed-retry-*): reject it alone, never a
            # nack (4.3 does not count a nack, so a nack-based retry would never end).
            log.warning(
                "message %s (%s) failed in %s on attempt %d: %s: %s; the broker redelivers it later",
                props.message_id, routing_key, consumer.queue, failures + 1, type(error).__name__, error,
                exc_info=traceback, extra=context,
            )  # fmt: skip
            self.stats.count("retried", routing_key)
            acks.reject(tag)
            return
        if decision.delay is not None:
            log.warning(
                "message %s (%s) failed in %s on attempt %d: %s: %s; %s",
                props.message_id, routing_key, consumer.queue, failures + 1,
                type(error).__name__, error, decision.reason,
                exc_info=traceback, extra=context,
            )  # fmt: skip
            level, due_at_ms = wire.delay_plan(decision.delay, int(self.clock() * 1000))
            if not isinstance(error, Retry):
                due_at_ms = None  # the default back-off stops at the longest level, as hutch-schedule's
            received = props.headers or {}
            headers = wire.retry_headers(
                received, failures=failures, routing_key=routing_key, queue=consumer.queue,
                due_at_ms=due_at_ms,
                foreign=wire.foreign_failures(received, consumer.routing_keys, consumer.queue, self.exchange),
            )  # fmt: skip
            await self._settle_with_copy(
                delivered, tag, acks, self._parked(_RETRY, level, routing_key, props, headers)
            )
            return
        log.error(
            "message %s (%s) failed in %s on attempt %d: %s: %s; %s, so it goes to the dead queue %s",
            props.message_id, routing_key, consumer.queue, failures + 1,
            type(error).__name__, error, decision.reason, self.dead_queue,
            exc_info=traceback, extra=context,
        )  # fmt: skip
        error_text = wire.format_error(error)
        headers = wire.dead_headers(
            props.headers or {},
            routing_key=routing_key,
            queue=consumer.queue,
            error=error_text,
            failed_at_ms=int(self.clock() * 1000),
            failures=failures,
        )
        copy = _Copy(_DEAD, "", self.dead_queue, copy_properties(props, headers, None), routing_key)
        stored = await self._settle_with_copy(delivered, tag, acks, copy)
        if stored and self.on_dead is not None:
            letter = DeadLetter(props.message_id, routing_key, consumer.queue, self.dead_queue, error_text,
                                failures + 1)  # fmt: skip
            try:
                self.on_dead(letter)
            except Exception:  # a broken hook must not stop the worker; the message is stored already
                log.exception("the on_dead callback failed for message %s", props.message_id)

    async def _park(
        self, delivered: Delivery, tag: int, acks: AckTracker, routing_key: str, seconds: float
    ) -> None:
        # A long delay outlasts the longest level: wait one more level, addressed to this queue alone.
        props = delivered.properties
        level = wire.delay_level(seconds)
        headers = wire.repark_headers(props.headers or {}, queue=self.consumer.queue, routing_key=routing_key)
        await self._settle_with_copy(
            delivered, tag, acks, self._parked(_REPARK, level, routing_key, props, headers)
        )

    def _parked(
        self, kind: _CopyKind, level: int, routing_key: str, props: Properties, headers: dict[str, Any]
    ) -> _Copy:
        """A copy for this namespace's park queue of ``level`` (named in ``headers``), sent with the
        event's own key, which the copy keeps when it comes out (see wire.park_in)."""
        exchange = wire.park_in(self.namespace, self.exchange, level, headers)
        return _Copy(kind, exchange, routing_key, copy_properties(props, headers, level), routing_key)

    async def _settle_with_copy(
        self, delivered: Delivery, tag: int, acks: AckTracker, copy: _Copy, *, ack_at_once: bool = False
    ) -> bool:
        """Ack the delivery once its copy is confirmed where it goes; else hand it back.

        Returns whether the copy was stored. ``ack_at_once`` sends the ack alone, not in a batch."""
        try:
            await self.sender.send(copy.exchange, copy.key, delivered.body, copy.props, mandatory=True)
        except Exception as exc:
            log.error(
                "could not store %s of message %s in %s (%s); it stays in %s for redelivery",
                copy.kind.what,
                delivered.properties.message_id,
                copy.key,
                exc,
                self.consumer.queue,
            )
            await asyncio.sleep(REQUEUE_PAUSE_S)
            acks.reject(tag)
            return False
        self.stats.count(copy.kind.outcome, copy.routing_key)
        if ack_at_once:
            acks.ack_now(tag)
        else:
            acks.ack(tag)
        return True
