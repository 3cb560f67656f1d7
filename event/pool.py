"""WorkerPool: the registry of consumers and their lifecycle (start, run, reconnect, drain, stop)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from event import control, depths, drain, driver, topology, wire
from event.batching import DEFAULT_BATCH_WAIT_S
from event.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_EXCHANGE,
    DEFAULT_GRACE_S,
    DEFAULT_PREFETCH,
    DEFAULT_PUBLISH_TIMEOUT_S,
    DEFAULT_THREADS,
    check_count,
    check_name,
    check_queue_type,
    check_seconds,
    redact_url,
    resolve_url,
)
from event.connection import (
    Connection,
    Connector,
    broker_reason,
    broker_version,
    close_quietly,
    connect,
    connected_url,
    open_channel,
)
from event.consumer import Consumer, Handler, define_consumer
from event.cron import CronRunner, Schedule, define_schedule
from event.dispatch import Dispatcher, OnDead
from event.eager import Slots
from event.errors import ConfigurationError, ConnectionFailed, EventError
from event.management import ManagementApi, configured_base
from event.message import Context
from event.metrics import ConsumerStats, PoolStats, registry_for
from event.middleware import Middleware
from event.pausing import PauseSwitch
from event.retry import BROKER_RETRY_SINCE, DEFAULT_RETRIES, Backoff
from event.runners.command import CommandRunner
from event.runners.counts import OutcomeCounts
from event.schedule_copies import ScheduleCopies
from event.sending import Sender
from event.supervise import ConsumerSupervisor, backoff
from event.topology import Plan

if TYPE_CHECKING:
    from event.runners.http import HttpProxy

log = logging.getLogger("event.pool")

H = TypeVar("H", bound=Handler)
M = TypeVar("M", bound=Middleware)

ACK_INTERVAL_S = 0.05
STARTS_IN_FLIGHT = 32  # consumers starting at once (their channels, declarations and consumes)
RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def default_prefetch(batch: int) -> int:
    """The prefetch of a consumer that names none: two batches for a batch consumer (one gathering
    while one runs), else :data:`DEFAULT_PREFETCH`."""
    return min(65535, 2 * batch) if batch else DEFAULT_PREFETCH


def _is_async(func: object) -> bool:
    # inspect's TypeGuard would narrow the decorated function's type away from the caller's own.
    return inspect.iscoroutinefunction(func)


def _runner_queue(routing_keys: tuple[str, ...], queue: str | None) -> str | None:
    return queue if queue is not None or not routing_keys else wire.runner_queue_name(routing_keys[0])


class LostWhileStarting(ConnectionFailed):
    """The connection ended while the pool was starting on it: the pool reconnects, as for any loss."""


class WorkerPool:
    """Consumers bound to a Hutch exchange, each with its own durable queue, run under shared limits.

    ``concurrency`` caps the handlers running at once in the whole pool (0: no cap); each consumer may
    cap its own with ``max_concurrency``. ``grace`` is how long shutdown waits for running handlers
    before cancelling them (their messages then go back to the queue). A body larger than
    ``max_body_bytes`` (0: no limit) goes to the dead queue undecoded. ``queue_type="quorum"`` makes the
    consumer queues (those that do not choose) and the dead queue quorum queues, the choice for a
    cluster. The pool binds nothing to hutch-schedule's exchange: of the copies that the namespaces
    bound there make of each hutch-schedule message, it runs one (see :mod:`event.schedule_copies`).
    ``declare_delay_queues=True`` is for a pool that stands alone (no Ruby service runs hutch-schedule
    on the broker): it declares and binds its namespace's delay queues, as hutch-schedule would, with
    hutch-schedule's exact arguments.
    ``url`` may list several nodes of a cluster (a list, or comma-separated): every connect and
    reconnect starts at a random one and tries the others in turn. ``on_dead`` is called (it must not
    block: see :class:`event.runners.hooks.DeadHook`) with each message stored in the dead queue.
    Every ``depth_interval`` seconds each consumer queue's ready messages are read, for the autoscaling
    gauges (``event_drain_seconds`` and its parts, see :mod:`event.drain`).

    A consumer that the broker cancels, or whose channel it closes, is declared again and consumes
    again on a new channel (see :mod:`event.supervise`); while any consumer is not consuming, or the
    pool's shared queues could not be declared, :attr:`ready` is False and the log says why.
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        namespace: str = "",
        exchange: str = DEFAULT_EXCHANGE,
        concurrency: int = DEFAULT_CONCURRENCY,
        grace: float = DEFAULT_GRACE_S,
        threads: int = DEFAULT_THREADS,
        dead_queue_ttl_ms: int = wire.DEAD_QUEUE_TTL_MS,
        dead_queue_max_length: int = wire.DEAD_QUEUE_MAX_LENGTH,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
        name: str = "event worker",
        clock: Callable[[], float] = time.time,
        max_body_bytes: int = 0,
        queue_type: str | None = None,
        on_dead: OnDead | None = None,
        declare_delay_queues: bool = False,
        depth_interval: float = drain.DEFAULT_INTERVAL_S,
    ) -> None:
        self.url = resolve_url(url)
        # Stand alone: bind this namespace's hutch-schedule delay queues (see event.schedule_copies).
        self.declare_delay_queues = declare_delay_queues
        self.on_dead = on_dead  # told of each message once it is stored in the dead queue
        self.namespace = namespace
        self.exchange = check_name("exchange", exchange)
        self.concurrency = check_count("concurrency", concurrency)
        self.grace = check_seconds("grace", grace)
        self.threads = check_count("threads", threads, minimum=1)
        self.dead_queue = wire.dead_queue_name(namespace, exchange)
        self.dead_queue_ttl_ms = check_count("dead_queue_ttl_ms", dead_queue_ttl_ms, minimum=1)
        self.dead_queue_max_length = check_count("dead_queue_max_length", dead_queue_max_length, minimum=1)
        self.publish_timeout = check_seconds("publish_timeout", publish_timeout, allow_zero=False)
        self.name = name
        self.clock = clock
        self.max_body_bytes = check_count("max_body_bytes", max_body_bytes)
        self.queue_type = check_queue_type(queue_type)
        # How often each consumer queue's ready messages are read (a passive declare): see event.drain.
        self.depth_interval = check_seconds("depth_interval", depth_interval, allow_zero=False)
        self._depth_task: asyncio.Task[None] | None = None
        self._consumers: dict[str, Consumer] = {}
        self._middleware: list[Middleware] = []
        self._dispatchers: list[Dispatcher] = []
        self._connection: Connection | None = None
        self.connector: Connector = connect  # event.testing.TestBroker swaps in its own
        self._supervisors: list[ConsumerSupervisor] = []
        self._shared_plan = Plan((), ())  # the exchanges, delay queues and dead queue (set by run)
        self._shared_declared = False
        self._started = False  # _start has finished on the current connection: ready may turn true
        self._shared_task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._stop_calls = 0
        self._schedules: dict[str, Schedule] = {}
        self._cron: CronRunner | None = None
        self._cron_task: asyncio.Task[None] | None = None
        self._pauses = PauseSwitch(self._consumers.keys)  # see the "pausing" section below
        self.stats = PoolStats(concurrency=self.concurrency)
        self.registry = registry_for(self.stats)  # the pool's own: serve it with event.http or your app
        # Retry, re-park and dead copies and cron ticks: one confirm channel on the current connection.
        self._sender = Sender(
            self._live_connection,
            timeout=self.publish_timeout,
            stats=self.stats.publish,
            on_closed=self._copies_channel_closed,
            on_returned=self._copy_returned,
        )
        self._runner_counts: OutcomeCounts | None = None

    def __repr__(self) -> str:
        return (
            f"WorkerPool(url={redact_url(self.url)!r}, namespace={self.namespace!r}, "
            f"exchange={self.exchange!r}, consumers={list(self._consumers)})"
        )

    # --- registration ------------------------------------------------------------------------------------

    def consumer(
        self,
        *routing_keys: str,
        queue: str | None = None,
        context: Callable[[], Any] = Context,
        prefetch: int | None = None,
        max_concurrency: int = 0,
        arguments: Mapping[str, Any] | None = None,
        middleware: tuple[Middleware, ...] = (),
        timeout: float | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff: Backoff | None = None,
        rate_limit: str | None = None,
        rate_burst: int = 1,
        max_deliveries: int = wire.DEFAULT_MAX_DELIVERIES,
        batch: int = 0,
        batch_wait: float = DEFAULT_BATCH_WAIT_S,
        queue_type: str | None = None,
        retry: str = "park",
        max_priority: int = 0,
    ) -> Callable[[H], H]:
        """Register the decorated function as the consumer of ``routing_keys`` (topic patterns allowed).

        Its queue is ``<namespace>:<queue>``, ``queue`` defaulting to the function's name in Hutch's
        snake case. ``context`` is called for every message; the instance goes to each middleware and
        to the handler. ``prefetch`` bounds the unacknowledged messages the broker sends this consumer,
        ``max_concurrency`` the handlers it runs at once (0: only the pool's limit applies).

        A failing message is retried while its attempt is at most ``retries``, after ``backoff(failures)``
        seconds (default: hutch-schedule's ``failures**4 + 2``, rounded up to a delay level), then goes to
        the dead queue. ``timeout`` cancels a handler after that many seconds, counting a failure.
        ``rate_limit`` (``"30/s"``, ``"100/m"``, ``"5000/h"``, with up to ``rate_burst`` at once) holds
        messages back in this worker without taking a concurrency slot.

        A message whose deliveries end ``max_deliveries`` times without an ack or a failure (its
        handler killed the worker: SIGKILL, out of memory, a crash in native code) goes to the dead
        queue instead of being delivered again (see docs/reliability.md).

        ``max_priority`` (1-255) makes the queue deliver higher ``priority`` messages first: a classic
        queue is declared with ``x-max-priority`` (a queue argument: every service declaring the queue
        must give the same), a quorum queue uses its own priorities (RabbitMQ 4.x; see docs/priorities.md).

        A handler typed ``msg: Message[SendEmail]``, or taking a third parameter ``payload: SendEmail``,
        gets the body validated into a ``SendEmail`` (a dataclass, a TypedDict or a pydantic model);
        a body that does not fit goes to the dead queue with the fields named.

        ``batch=N`` makes it a batch consumer: the handler gets ``list[Message[T]]`` of up to ``N``
        messages, gathered for at most ``batch_wait`` seconds, and middleware gets that list as its
        message. Returning acks them all; raising retries each; raising :class:`BatchFailed` retries
        only the ones it names. ``prefetch`` defaults to 50, or to two batches for a batch consumer;
        ``max_concurrency`` then counts batches (see docs/batches.md).

        ``queue_type`` (``"classic"`` or ``"quorum"``) sets the queue's ``x-queue-type``. With
        ``retry="broker"`` (quorum queues on RabbitMQ 4.3 or later) a failed message is rejected and the
        broker itself redelivers it after a delay derived from ``backoff``, instead of a copy through a
        park queue; an older broker is a :class:`ConfigurationError` at start (docs/delays-and-retries.md).
        """

        def register(handler: H) -> H:
            defined = define_consumer(
                handler,
                routing_keys,
                namespace=self.namespace,
                queue=queue,
                context=context,
                prefetch=prefetch if prefetch is not None else default_prefetch(batch),
                max_concurrency=max_concurrency,
                arguments=arguments,
                middleware=middleware,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                rate_limit=rate_limit,
                rate_burst=rate_burst,
                max_deliveries=max_deliveries,
                batch=batch,
                batch_wait=batch_wait,
                # the pool's queue_type, unless the consumer chose one (its own, or in its arguments)
                queue_type=queue_type
                if queue_type is not None or "x-queue-type" in (arguments or {})
                else self.queue_type,
                retry=retry,
                max_priority=max_priority,
            )
            if defined.queue == self.dead_queue or wire.is_reserved_queue_name(defined.queue, self.exchange):
                raise ConfigurationError(
                    f"queue {defined.queue!r} is reserved for event's own use; choose another"
                )
            taken = self._consumers.get(defined.queue)
            if taken is not None:
                raise ConfigurationError(
                    f"queue {defined.queue!r} already belongs to consumer {taken.handler.__qualname__}; "
                    f"give {getattr(handler, '__qualname__', handler)} another name with queue=..."
                )
            self._consumers[defined.queue] = defined
            return handler

        return register

    def proxy(
        self, *routing_keys: str, to: str, timeout: float = 30.0, headers: Mapping[str, str] | None = None,
        queue: str | None = None, **consumer_options: Any,
    ) -> HttpProxy:  # fmt: skip
        """Consume ``routing_keys`` by POSTing each body to the URL ``to`` (see :mod:`event.runners.http`).

        ``queue`` defaults to the first routing key (wildcards spelled ``any``/``all``);
        ``consumer_options`` are those of :meth:`consumer`. Close the returned proxy after :meth:`run`.
        """
        try:
            from event.runners.http import HttpProxy
        except ImportError as exc:  # its HTTP client is an extra: only proxies need it
            raise ConfigurationError(
                f'the proxy needs pyreqwest: pip install "rabbit-event[proxy]" ({exc})'
            ) from exc
        runner = HttpProxy(to, timeout=timeout, headers=headers, counts=self._count_runners())
        self.consumer(*routing_keys, queue=_runner_queue(routing_keys, queue), **consumer_options)(
            runner.handler
        )
        return runner

    def command(
        self, *routing_keys: str, argv: Sequence[str], timeout: float = 60.0, queue: str | None = None,
        **consumer_options: Any,
    ) -> CommandRunner:  # fmt: skip
        """Consume ``routing_keys`` by running ``argv`` (plus the body's ``args``) for each message.

        See :mod:`event.runners.command`; ``queue`` and ``consumer_options`` as for :meth:`proxy`.
        """
        runner = CommandRunner(argv, timeout=timeout, counts=self._count_runners())
        self.consumer(*routing_keys, queue=_runner_queue(routing_keys, queue), **consumer_options)(
            runner.handler
        )
        return runner

    def _count_runners(self) -> OutcomeCounts:
        if self._runner_counts is None:  # one collector for all the pool's runners: one metric name
            self._runner_counts = OutcomeCounts()
            self.registry.register(self._runner_counts)
        return self._runner_counts

    def schedule(
        self,
        expression: str,
        routing_key: str,
        *,
        payload: Any = None,
        tz: str = "UTC",
        catch_up: str = "skip",
        name: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> Schedule:
        """Publish ``payload`` with ``routing_key`` on every tick of the croniter ``expression`` in ``tz``.

        However many workers run this pool, each tick is published once (by the current leader), with
        the message id ``<name>@<tick in UTC>``. Ticks missed while no worker ran are skipped, or with
        ``catch_up="last"`` the most recent one is published when a worker comes back. A bad expression
        or time zone raises :class:`ConfigurationError` here, not at the first tick.
        """
        defined = define_schedule(
            expression,
            routing_key,
            payload=payload,
            tz=tz,
            catch_up=catch_up,
            name=name,
            headers=dict(headers or {}),
        )
        if defined.name in self._schedules:
            raise ConfigurationError(
                f"a schedule named {defined.name!r} exists already; give this one name=..."
            )
        self._schedules[defined.name] = defined
        return defined

    def cron(
        self,
        expression: str,
        routing_key: str,
        *,
        payload: Any = None,
        tz: str = "UTC",
        catch_up: str = "skip",
        name: str | None = None,
        **consumer_options: Any,
    ) -> Callable[[H], H]:
        """:meth:`schedule` the event and register the decorated function as its consumer.

        ``consumer_options`` are those of :meth:`consumer` (queue, prefetch, retries, ...).
        """
        self.schedule(expression, routing_key, payload=payload, tz=tz, catch_up=catch_up, name=name)
        return self.consumer(routing_key, **consumer_options)

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The registered cron schedules."""
        return tuple(self._schedules.values())

    def middleware(self, func: M) -> M:
        """Register pool-wide middleware ``async def mw(ctx, msg, call_next)``; the first runs outermost."""
        if not _is_async(func):
            raise ConfigurationError(f"middleware {func!r} must be an async function (ctx, msg, call_next)")
        self._middleware.append(func)
        return func

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """The registered consumers, in registration order."""
        return tuple(self._consumers.values())

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Consume until SIGTERM/SIGINT or :meth:`stop`, reconnecting when the connection drops, then drain.

        Raises :class:`ConfigurationError` or :class:`ConnectionFailed` when the first start fails.
        """
        if not self._consumers and not self._schedules:
            raise ConfigurationError(
                f"{self!r} has no consumers: decorate a handler with @pool.consumer(...)"
            )
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._ready = asyncio.Event()
        self._stop_calls = 0
        self.stats.consumers = []
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="event-handler")
        pool_slots = Slots(self.concurrency) if self.concurrency else None
        copies = ScheduleCopies(self.exchange, self._queue_exists, self._schedule_bound)
        self._dispatchers = [
            Dispatcher(
                consumer,
                namespace=self.namespace,
                exchange=self.exchange,
                dead_queue=self.dead_queue,
                middleware=self._middleware,
                pool_slots=pool_slots,
                pool_concurrency=self.concurrency,
                executor=self._executor,
                sender=self._sender,
                clock=self.clock,
                stats=self._consumer_stats(consumer),
                max_body_bytes=self.max_body_bytes,
                on_dead=self.on_dead,
                schedule_copies=copies,
            )
            for consumer in self._consumers.values()
        ]
        shared, own = self._plans()
        self._shared_plan = shared
        self._supervisors = [
            ConsumerSupervisor(
                dispatcher,
                own[dispatcher.consumer.queue],
                ack_interval=ACK_INTERVAL_S,
                on_change=self._update_ready,
                consume=self._pauses.consume,
            )
            for dispatcher in self._dispatchers
        ]
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self.stop)
                    installed.append(signum)
        try:
            try:
                await self._start(first=True)
            except LostWhileStarting as exc:
                # Connected, then cut off half-way (a node restarting, an operator closing connections):
                # the same as a connection lost later, not a start error.
                log.warning("%s; reconnecting", exc)
                await self._reconnect()
                if self._stop_requested.is_set():
                    return
            assert self._connection is not None
            log.info(
                "%s consuming %d queue(s) at %s",
                self.name,
                len(self._consumers),
                connected_url(self._connection),
            )
            while not self._stop_requested.is_set():
                connection = self._connection
                assert connection is not None
                stop_wait = asyncio.ensure_future(self._stop_requested.wait())
                closing = connection.closing
                waits: set[asyncio.Future[Any]] = {stop_wait, closing}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if self._stop_requested.is_set():
                    break
                reason = closing.exception() if not closing.cancelled() else None
                log.warning(
                    "lost the connection to RabbitMQ at %s (%s); reconnecting",
                    connected_url(connection),
                    broker_reason(reason),
                )
                await self._forget_channels()
                self._update_ready()
                await self._reconnect()
                if not self._stop_requested.is_set():
                    self.stats.reconnects += 1
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to stop: no new deliveries, running handlers finish within ``grace``.

        A second call cancels running handlers at once (their messages go back to the queue).
        """
        self._stop_calls += 1
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`run` consumes from every queue (call it once :meth:`run` has started)."""
        if self._ready is None:
            raise RuntimeError(f"{self!r} is not running: start pool.run() first")
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    @contextlib.asynccontextmanager
    async def running(self, timeout: float = 30.0) -> AsyncIterator[WorkerPool]:
        """Run the pool in the background for the body of an ``async with`` (handy in tests and scripts)."""
        task = asyncio.create_task(self.run(install_signal_handlers=False))
        await asyncio.sleep(0)  # let run() create its events
        ready = asyncio.create_task(self.wait_until_ready(timeout))
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # raises the start error
        await ready
        try:
            yield self
        finally:
            self.stop()
            await task

    @property
    def ready(self) -> bool:
        """Whether the pool is connected, its shared queues declared, and every consumer consuming.

        For ``/readyz``. It turns False as soon as the broker cancels a consumer or closes a channel,
        and True again once everything consumes.
        """
        connection = self._connection
        return bool(
            self._ready and self._ready.is_set() and connection is not None and not connection.is_closed
        )

    def _update_ready(self) -> None:
        if self._ready is None or self._stop_requested is None:
            return
        connection = self._connection
        self._set_ready(
            connection is not None
            and not connection.is_closed
            and self._started
            and self._shared_declared
            and all(supervisor.consuming for supervisor in self._supervisors)
            and not self._stop_requested.is_set()
        )

    def _set_ready(self, ready: bool) -> None:
        assert self._ready is not None
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        self.stats.connected = ready

    def _consumer_stats(self, consumer: Consumer) -> ConsumerStats:
        stats = ConsumerStats(consumer.queue, consumer.max_concurrency)
        stats.paused = lambda: self._pauses.is_paused(consumer.queue)
        self.stats.consumers.append(stats)
        return stats

    def topology(self) -> topology.Plan:
        """Everything this pool declares on the broker (what ``event topology`` prints)."""
        return topology.pool_plan(
            self.namespace,
            self.exchange,
            dead_ttl_ms=self.dead_queue_ttl_ms,
            dead_max_length=self.dead_queue_max_length,
            dead_queue_type=self.queue_type,
            consumers=[
                (c.handler.__qualname__, c.queue, self._queue_arguments(c.arguments), c.bindings)
                for c in self._consumers.values()
            ],
            max_deliveries={c.queue: c.max_deliveries for c in self._consumers.values()},
            delay_queues=self.declare_delay_queues,
            max_priorities={c.queue: c.max_priority for c in self._consumers.values() if c.max_priority},
        )

    def _plans(self) -> tuple[Plan, dict[str, Plan]]:
        # The pool's one plan, split: what all consumers share (exchanges, delay and dead queues), and
        # for each consumer its own queue entry with the exchanges its bindings name.
        plan = self.topology()
        own: dict[str, Plan] = {}
        for queue in plan.queues:
            if queue.name in self._consumers:
                sources = {binding.source for binding in queue.bindings}
                own[queue.name] = Plan(tuple(e for e in plan.exchanges if e.name in sources), (queue,))
        shared = Plan(plan.exchanges, tuple(q for q in plan.queues if q.name not in own))
        return shared, own

    def _queue_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        chosen = dict(arguments)
        if self.queue_type is not None:
            chosen.setdefault("x-queue-type", self.queue_type)
        return chosen

    @property
    def in_flight(self) -> int:
        """Handlers running right now, across all consumers."""
        return sum(d.running for d in self._dispatchers)

    @property
    def deliveries_in_hand(self) -> int:
        """Deliveries taken and not yet settled, across all consumers: waiting for a slot or a rate
        limit, running, or storing a retry or dead copy (event.testing waits on it)."""
        return sum(d.in_hand for d in self._dispatchers)

    # --- pausing (event.pausing keeps the state; event.control carries operators' commands) ------------

    async def pause(self, queue: str) -> None:
        """Stop taking messages from the consumer queue ``queue`` (its full name, e.g. ``myapp:send_email``).

        Running handlers finish and ack; other workers of the queue go on. The pause outlives reconnects
        until :meth:`resume`. ``event serve``'s pause sends the same to every running worker.
        """
        await self._pauses.pause(queue)

    async def resume(self, queue: str) -> None:
        """Take messages from ``queue`` again after :meth:`pause`."""
        await self._pauses.resume(queue)

    @property
    def paused(self) -> frozenset[str]:
        """The consumer queues paused now (also in ``/readyz`` and the ``event_consumer_paused`` gauge)."""
        return self._pauses.paused

    async def _listen_for_commands(self, connection: Connection) -> None:
        await control.listen(
            connection, namespace=self.namespace, exchange=self.exchange, on_command=self._pauses.apply
        )

    # --- internals ---------------------------------------------------------------------------------------

    async def _start(self, *, first: bool) -> None:
        # At the first start a configuration error (a queue that exists with other arguments) ends
        # run(); anything else, and everything on a reconnect, is logged and retried with back-off.
        connection = await self.connector(self.url, name=self.name)
        self._connection = connection
        try:
            await self._declare_shared(connection, first=first)
            await self._sender.open()
            if first:
                self._check_broker(connection)
                await self._start_consumers(connection)
            for supervisor in self._supervisors:
                supervisor.watch(connection)
            await self._listen_for_commands(connection)
            self._depth_task = asyncio.get_running_loop().create_task(
                depths.poll(
                    connection,
                    [(c.queue, c.depth, c.settled) for c in self.stats.consumers],
                    interval=self.depth_interval,
                )
            )
            if self._schedules:
                runner = CronRunner(
                    list(self._schedules.values()),
                    namespace=self.namespace,
                    exchange=self.exchange,
                    sender=self._sender,
                    clock=self.clock,
                )
                self._cron = runner
                self._cron_task = asyncio.get_running_loop().create_task(self._run_cron(runner, connection))
        except BaseException as exc:
            lost = connection.is_closed  # before we close it: did the broker or the network end it?
            await self._forget_channels()
            await close_quietly(connection)
            if lost and isinstance(exc, Exception) and not isinstance(exc, ConfigurationError):
                raise LostWhileStarting(
                    f"lost the connection to {connected_url(connection)} while starting: {broker_reason(exc)}"
                ) from exc
            raise
        # Only now may the pool say it is ready: its consumers consume before the commands channel,
        # cron and the rest are set up, and a start cut off half-way must not have looked ready.
        self._started = True
        self._update_ready()

    def _check_broker(self, connection: Connection) -> None:
        """What a consumer needs of the broker, it has: else a ConfigurationError, before any consumes."""
        by_broker = [c.queue for c in self._consumers.values() if c.retry == "broker"]
        version = broker_version(connection)
        if by_broker and version < BROKER_RETRY_SINCE:
            since = ".".join(map(str, BROKER_RETRY_SINCE))
            raise ConfigurationError(
                f'queue(s) {", ".join(by_broker)} have retry="broker", which needs RabbitMQ {since} or '
                f"later (quorum queues' delayed retry); {connected_url(connection)} is "
                f'{".".join(map(str, version)) or "of unknown version"}: use retry="park" (the default)'
            )

    async def _start_consumers(self, connection: Connection) -> None:
        # Several consumers start at once on the one connection, each on its own channel: a start is
        # a handful of round trips (channel, qos, declare, binds, consume), so one after the other a
        # pool of 300 took 3 s to become ready, mostly waiting. A queue that exists with other arguments
        # ends run() (after every start has ended, so that no channel is left half set up).
        slots = asyncio.Semaphore(STARTS_IN_FLIGHT)

        async def start(supervisor: ConsumerSupervisor) -> None:
            async with slots:
                try:
                    await supervisor.start(connection)
                except ConfigurationError:
                    raise
                except EventError as exc:
                    log.error("consumer of queue %r is not consuming yet: %s", supervisor.queue, exc)

        results = await asyncio.gather(*(start(s) for s in self._supervisors), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _declare_shared(self, connection: Connection, *, first: bool) -> None:
        failures = await topology.declare_each(
            lambda: open_channel(connection, confirms=False), self._shared_plan
        )
        if first:
            for failure in failures.values():
                if isinstance(failure, ConfigurationError):
                    raise failure
        self._shared_declared = not failures
        if failures:
            for failure in failures.values():
                log.error("at %s: %s; declaring it again shortly", connected_url(connection), failure)
            self._declare_shared_later(connection)

    def _declare_shared_later(self, connection: Connection) -> None:
        if self._shared_task is None or self._shared_task.done():
            self._shared_declared = False
            self._update_ready()
            self._shared_task = asyncio.get_running_loop().create_task(self._redeclare_shared(connection))

    async def _redeclare_shared(self, connection: Connection) -> None:
        # A classic queue whose home node is down answers NOT_FOUND until the node is back; a queue the
        # broker is restarting refuses for a moment. Neither is a reason to stop consuming the others.
        attempt = 0
        while not connection.is_closed:
            await asyncio.sleep(backoff(attempt, RECONNECT_DELAYS_S))
            attempt += 1
            try:
                failures = await topology.declare_each(
                    lambda: open_channel(connection, confirms=False), self._shared_plan
                )
            except EventError as exc:
                failures = {"": exc}
            if not failures:
                log.info(
                    "declared the shared queues at %s after %d attempt(s)", connected_url(connection), attempt
                )
                self._shared_declared = True
                self._update_ready()
                return
            for failure in failures.values():
                log.error(
                    "at %s (attempt %d, next in %g s): %s",
                    connected_url(connection),
                    attempt,
                    backoff(attempt, RECONNECT_DELAYS_S),
                    failure,
                )

    async def _live_connection(self, deadline: float) -> Connection:
        # The sender's source: the pool's connection while it lives; the pool alone reconnects (a copy
        # that cannot be stored now hands its delivery back, and the broker redelivers it).
        connection = self._connection
        if connection is None or connection.is_closed:
            raise ConnectionFailed("no connection to publish on: waiting to reconnect")
        return connection

    async def _queue_exists(self, queue: str) -> bool:
        # For ScheduleCopies: a passive declare, on a channel of its own (NOT_FOUND closes it).
        connection = await self._live_connection(0.0)
        channel = await open_channel(connection, confirms=False)
        try:
            await channel.queue_declare(queue, passive=True)
        except driver.NotFound:
            return False
        finally:
            await close_quietly(channel)
        return True

    async def _schedule_bound(self) -> set[str]:
        # For ScheduleCopies: the namespaces whose delay queues are bound to hutch.schedule, from the
        # management API ($EVENT_MANAGEMENT_URL, else beside the broker's host); it raises without one.
        api = ManagementApi.for_url(self.url, configured_base(None, os.environ))
        bindings = await api.bindings_from(wire.schedule_exchange_name(self.exchange))
        return {
            namespace
            for binding in bindings
            if binding.get("destination_type") == "queue"
            and (namespace := wire.delay_queue_namespace(binding.get("destination", ""), self.exchange))
            is not None
        }

    def _copies_channel_closed(self, exc: BaseException) -> None:
        # A channel error (a queue or exchange deleted under us) closes only the channel: the sender
        # opens another for the next copy; what was deleted is declared again.
        connection = self._connection
        if connection is None or connection.is_closed:
            return
        self.stats.publish_channel_reopens += 1
        log.error(
            "the broker closed the channel of retry and dead copies at %s: %s; opening another and "
            "declaring the shared queues again",
            connected_url(connection),
            broker_reason(exc),
        )
        self._declare_shared_later(connection)

    def _copy_returned(self, exchange: str, queue: str) -> None:
        # A copy is mandatory: one to a queue that is gone fails loudly rather than vanishing.
        connection = self._connection
        if connection is not None and not connection.is_closed and self._shared_declared:
            log.error("queue %r is gone (a copy to it came back); declaring the shared queues again", queue)
            self._declare_shared_later(connection)

    async def _forget_channels(self) -> None:
        self._started = False
        self._stop_depths()
        if self._cron_task is not None:
            self._cron_task.cancel()
            self._cron_task = None
        if self._shared_task is not None:
            self._shared_task.cancel()
            self._shared_task = None
        self._shared_declared = False
        # Delivery tags belong to their channel: once it is gone, no ack may be sent for them anywhere.
        for supervisor in self._supervisors:
            await supervisor.forget()

    async def _reconnect(self) -> None:
        # Nothing ends this loop but stop(): a node that is down, a declare the broker refuses, a queue
        # whose home node is gone are each logged and tried again, the pool staying not ready meanwhile.
        assert self._stop_requested is not None
        attempt = 0
        while not self._stop_requested.is_set():
            delay = backoff(attempt, RECONNECT_DELAYS_S)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_requested.wait()
            if self._stop_requested.is_set():
                return
            try:
                await self._start(first=False)
            except EventError as exc:
                log.warning("reconnect attempt %d to %s failed: %s", attempt, redact_url(self.url), exc)
                continue
            except Exception as exc:  # never die while reconnecting; the traceback shows what to fix
                log.warning(
                    "reconnect attempt %d to %s failed: %r", attempt, redact_url(self.url), exc, exc_info=True
                )
                continue
            assert self._connection is not None
            log.info(
                "reconnected to RabbitMQ at %s after %d attempt(s)", connected_url(self._connection), attempt
            )
            return

    async def _run_cron(self, runner: CronRunner, connection: Connection) -> None:
        try:
            await runner.run(connection)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if connection.is_closed:  # the connection died under it: the pool reconnects and starts another
                log.debug("cron runner stopped with its connection: %s", exc)
            else:  # cron stops on this worker until it reconnects: never only a debug line
                log.error("cron runner stopped: %s: %s", type(exc).__name__, exc)

    async def _stop_cron(self) -> None:
        task, self._cron_task = self._cron_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _stop_depths(self) -> None:
        if self._depth_task is not None:
            self._depth_task.cancel()  # its finally closes its channel
            self._depth_task = None

    async def _shutdown(self) -> None:
        self._pauses.close()
        self._stop_depths()
        await self._stop_cron()
        if self._shared_task is not None:
            self._shared_task.cancel()
            self._shared_task = None
        for dispatcher in self._dispatchers:
            dispatcher.accepting = False
        for supervisor in self._supervisors:
            await supervisor.cancel()
        await self._drain()
        for supervisor in self._supervisors:
            await supervisor.close()
        connection, self._connection = self._connection, None  # first: its closing is ours
        await self._sender.close()
        await close_quietly(connection)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        log.info("%s stopped", self.name)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        while True:
            tasks = {task for d in self._dispatchers for task in d.tasks}
            if not tasks:
                return
            left = deadline - loop.time()
            if left <= 0 or self._stop_calls > 1:
                break
            await asyncio.wait(tasks, timeout=min(left, 0.1))
        running = {task for d in self._dispatchers for task in d.tasks}
        log.warning(
            "%d handler(s) still running after the %g s grace period: cancelling them",
            len(running),
            self.grace,
        )
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=5)
