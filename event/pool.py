"""WorkerPool: the declared consumers (what users decorate at import time) and the public face of their
run; one run itself (connect, reconnect, readiness, drain, stop) is :mod:`event.lifecycle`'s."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from event import drain, topology, wire
from event.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_EXCHANGE,
    DEFAULT_GRACE_S,
    DEFAULT_PUBLISH_TIMEOUT_S,
    DEFAULT_THREADS,
    check_count,
    check_name,
    check_queue_type,
    check_seconds,
    redact_url,
    resolve_url,
)
from event.connect import Connector, connect
from event.consumer import (
    Consumer,
    ConsumerOptions,
    Handler,
    RunnerOptions,
    check_options,
    define_consumer,
)
from event.cron import Schedule, ScheduleOptions, define_schedule
from event.dispatch import OnDead
from event.errors import ConfigurationError
from event.lifecycle import Declared, PoolRun
from event.metrics import PoolStats, registry_for
from event.middleware import Middleware
from event.pausing import PauseSwitch
from event.runners.command import CommandRunner
from event.runners.counts import OutcomeCounts
from event.topology import Plan

if TYPE_CHECKING:
    from event.runners.http import HttpProxy

H = TypeVar("H", bound=Handler)
M = TypeVar("M", bound=Middleware)


class CronOptions(ScheduleOptions, ConsumerOptions, total=False):
    """The options of ``@pool.cron(...)``: a schedule's and its consumer's, each listed once where it is
    defined (the two lists share no name)."""


def _is_async(func: object) -> bool:
    # inspect's TypeGuard would narrow the decorated function's type away from the caller's own.
    return inspect.iscoroutinefunction(func)


def _runner_queue(routing_keys: tuple[str, ...], queue: str | None) -> str | None:
    return queue if queue is not None or not routing_keys else wire.runner_queue_name(routing_keys[0])


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
        self._consumers: dict[str, Consumer] = {}
        self._middleware: list[Middleware] = []
        self.connector: Connector = connect  # event.testing.TestBroker swaps in its own
        self._schedules: dict[str, Schedule] = {}
        # Pauses outlive reconnects and runs: see the "pausing" section below.
        self._pauses = PauseSwitch(self._consumers.keys)
        self.stats = PoolStats(concurrency=self.concurrency)
        self.registry = registry_for(self.stats)  # the pool's own: serve it with event.http or your app
        self._run: PoolRun | None = None  # the latest run (see event.lifecycle), kept once it has ended
        self._runner_counts: OutcomeCounts | None = None

    def __repr__(self) -> str:
        return (
            f"WorkerPool(url={redact_url(self.url)!r}, namespace={self.namespace!r}, "
            f"exchange={self.exchange!r}, consumers={list(self._consumers)})"
        )

    # --- registration ------------------------------------------------------------------------------------

    def consumer(self, *routing_keys: str, **options: Unpack[ConsumerOptions]) -> Callable[[H], H]:
        """Register the decorated function as the consumer of ``routing_keys`` (topic patterns allowed).

        The options are :class:`event.consumer.ConsumerOptions` (each left out takes the default said
        here). Its queue is ``<namespace>:<queue>``, ``queue`` defaulting to the function's name in Hutch's
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

        check_options(options, "consumer")  # a misspelt option fails here, as a keyword would

        def register(handler: H) -> H:
            defined = define_consumer(
                handler, routing_keys, namespace=self.namespace, pool_queue_type=self.queue_type, **options
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
        queue: str | None = None, **consumer_options: Unpack[RunnerOptions],
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
        **consumer_options: Unpack[RunnerOptions],
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

    def schedule(self, expression: str, routing_key: str, **options: Unpack[ScheduleOptions]) -> Schedule:
        """Publish ``payload`` with ``routing_key`` on every tick of the croniter ``expression`` in ``tz``.

        However many workers run this pool, each tick is published once (by the current leader), with
        the message id ``<name>@<tick in UTC>``. Ticks missed while no worker ran are skipped, or with
        ``catch_up="last"`` the most recent one is published when a worker comes back. The options
        (``payload``, ``tz``, ``catch_up``, ``name``, ``headers``) are :class:`event.cron.ScheduleOptions`.
        A bad expression or time zone raises :class:`ConfigurationError` here, not at the first tick.
        """
        defined = define_schedule(expression, routing_key, **options)
        if defined.name in self._schedules:
            raise ConfigurationError(
                f"a schedule named {defined.name!r} exists already; give this one name=..."
            )
        self._schedules[defined.name] = defined
        return defined

    def cron(self, expression: str, routing_key: str, **options: Unpack[CronOptions]) -> Callable[[H], H]:
        """:meth:`schedule` the event and register the decorated function as its consumer.

        ``options`` are the schedule's (payload, tz, catch_up, name, headers) and those of
        :meth:`consumer` (queue, prefetch, retries, ...).
        """
        given = dict(options)
        schedule_options = {key: given.pop(key) for key in ScheduleOptions.__optional_keys__ if key in given}
        check_options(given, "cron")
        self.schedule(expression, routing_key, **schedule_options)  # type: ignore[arg-type]
        return self.consumer(routing_key, **given)  # type: ignore[arg-type]

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

    # --- running (each run is an event.lifecycle.PoolRun) ------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Consume until SIGTERM/SIGINT or :meth:`stop`, reconnecting when the connection drops, then drain.

        Raises :class:`ConfigurationError` or :class:`ConnectionFailed` when the first start fails.
        """
        if not self._consumers and not self._schedules:
            raise ConfigurationError(
                f"{self!r} has no consumers: decorate a handler with @pool.consumer(...)"
            )
        shared, own = self._plans()
        declared = Declared(
            url=self.url,
            name=self.name,
            namespace=self.namespace,
            exchange=self.exchange,
            dead_queue=self.dead_queue,
            concurrency=self.concurrency,
            grace=self.grace,
            threads=self.threads,
            publish_timeout=self.publish_timeout,
            max_body_bytes=self.max_body_bytes,
            depth_interval=self.depth_interval,
            clock=self.clock,
            connector=self.connector,
            on_dead=self.on_dead,
            consumers=tuple(self._consumers.values()),
            schedules=tuple(self._schedules.values()),
            middleware=tuple(self._middleware),
            shared_plan=shared,
            own_plans=own,
        )
        # Made before the first await: running() and stop() find this run at once.
        self._run = PoolRun(declared, stats=self.stats, pauses=self._pauses)
        await self._run.run(install_signal_handlers=install_signal_handlers)

    def stop(self) -> None:
        """Ask :meth:`run` to stop: no new deliveries, running handlers finish within ``grace``.

        A second call cancels running handlers at once (their messages go back to the queue).
        """
        if self._run is not None:
            self._run.stop()

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`run` consumes from every queue (call it once :meth:`run` has started)."""
        if self._run is None:
            raise RuntimeError(f"{self!r} is not running: start pool.run() first")
        async with asyncio.timeout(timeout):
            await self._run.wait_until_ready()

    @contextlib.asynccontextmanager
    async def running(self, timeout: float = 30.0) -> AsyncIterator[WorkerPool]:
        """Run the pool in the background for the body of an ``async with`` (handy in tests and scripts)."""
        task = asyncio.create_task(self.run(install_signal_handlers=False))
        await asyncio.sleep(0)  # let run() make its PoolRun, which wait_until_ready waits on
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
        return self._run is not None and self._run.ready

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
        return self._run.in_flight if self._run is not None else 0

    @property
    def deliveries_in_hand(self) -> int:
        """Deliveries taken and not yet settled, across all consumers: waiting for a slot or a rate
        limit, running, or storing a retry or dead copy (event.testing waits on it)."""
        return self._run.deliveries_in_hand if self._run is not None else 0

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
