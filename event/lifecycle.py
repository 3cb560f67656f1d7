"""One run of a pool: its connection, consumers' supervisors, readiness, reconnects, drain and stop.

:class:`event.pool.WorkerPool` is what users declare at import time; each ``pool.run()`` makes one
:class:`PoolRun` of it, handed everything it needs (the declared consumers, their plans, the settings),
and that run owns what lives only while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from event import control, depths, driver, topology, wire
from event.config import redact_url
from event.connect import (
    Connection,
    Connector,
    broker_reason,
    broker_version,
    close_quietly,
    connected_url,
    open_channel,
)
from event.consumer import Consumer
from event.cron import CronRunner, Schedule
from event.dispatch import Dispatcher, OnDead
from event.eager import Slots
from event.errors import ConfigurationError, ConnectionFailed, EventError
from event.management import ManagementApi, configured_base
from event.metrics import ConsumerStats, PoolStats
from event.middleware import Middleware
from event.pacing import RECONNECT_DELAYS_S, delay_before
from event.pausing import PauseSwitch
from event.retry import BROKER_RETRY_SINCE
from event.schedule_copies import ScheduleCopies
from event.sending import Sender
from event.supervise import ConsumerSupervisor
from event.topology import Plan

log = logging.getLogger(__name__)

ACK_INTERVAL_S = 0.05
STARTS_IN_FLIGHT = 32  # consumers starting at once (their channels, declarations and consumes)


class LostWhileStarting(ConnectionFailed):
    """The connection ended while the pool was starting on it: the pool reconnects, as for any loss."""


@dataclass(frozen=True, slots=True)
class Declared:
    """What a run is given of its pool: the declared consumers, their plans and the pool's settings
    (see :class:`event.pool.WorkerPool` for what each means)."""

    url: str
    name: str
    namespace: str
    exchange: str
    dead_queue: str
    concurrency: int
    grace: float
    threads: int
    publish_timeout: float
    max_body_bytes: int
    depth_interval: float
    clock: Callable[[], float]
    connector: Connector
    on_dead: OnDead | None
    consumers: tuple[Consumer, ...]
    schedules: tuple[Schedule, ...]
    middleware: tuple[Middleware, ...]
    shared_plan: Plan  # the exchanges, delay queues and dead queue
    own_plans: Mapping[str, Plan]  # each consumer queue's own entry, by queue name


class PoolRun:
    """One run of a pool: connect, start the consumers, reconnect when the connection drops, drain and
    stop. ``stats`` and ``pauses`` are the pool's own: they outlive the run."""

    def __init__(self, declared: Declared, *, stats: PoolStats, pauses: PauseSwitch) -> None:
        self.declared = declared
        self.stats = stats
        self._pauses = pauses
        self._stop_requested = asyncio.Event()
        self._ready = asyncio.Event()
        self._stop_calls = 0
        self._connection: Connection | None = None
        self._shared_declared = False
        self._started = False  # _start has finished on the current connection: ready may turn true
        self._shared_task: asyncio.Task[None] | None = None
        self._depth_task: asyncio.Task[None] | None = None
        self.cron: CronRunner | None = None  # the cron runner of the current connection, if any
        self._cron_task: asyncio.Task[None] | None = None
        # Retry, re-park and dead copies and cron ticks: one confirm channel on the current connection.
        self._sender = Sender(
            self._live_connection,
            timeout=declared.publish_timeout,
            stats=stats.publish,
            on_closed=self._copies_channel_closed,
            on_returned=self._copy_returned,
        )
        stats.consumers = []
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=declared.threads, thread_name_prefix="event-handler"
        )
        pool_slots = Slots(declared.concurrency) if declared.concurrency else None
        copies = ScheduleCopies(declared.exchange, self._queue_exists, self._schedule_bound)
        self.dispatchers = [
            Dispatcher(
                consumer,
                namespace=declared.namespace,
                exchange=declared.exchange,
                dead_queue=declared.dead_queue,
                middleware=declared.middleware,
                pool_slots=pool_slots,
                pool_concurrency=declared.concurrency,
                executor=self._executor,
                sender=self._sender,
                clock=declared.clock,
                stats=self._consumer_stats(consumer),
                max_body_bytes=declared.max_body_bytes,
                on_dead=declared.on_dead,
                schedule_copies=copies,
            )
            for consumer in declared.consumers
        ]
        self._supervisors = [
            ConsumerSupervisor(
                dispatcher,
                declared.own_plans[dispatcher.consumer.queue],
                ack_interval=ACK_INTERVAL_S,
                on_change=self._update_ready,
                consume=pauses.consume,
            )
            for dispatcher in self.dispatchers
        ]

    def _consumer_stats(self, consumer: Consumer) -> ConsumerStats:
        stats = ConsumerStats(consumer.queue, consumer.max_concurrency)
        stats.paused = lambda: self._pauses.is_paused(consumer.queue)
        self.stats.consumers.append(stats)
        return stats

    # --- what the pool's public methods ask -------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT), reconnecting when the connection drops, then
        drain; a first start that fails raises."""
        declared = self.declared
        loop = asyncio.get_running_loop()
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
                declared.name,
                len(declared.consumers),
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
        """Ask :meth:`run` to stop; a second call cancels running handlers at once."""
        self._stop_calls += 1
        self._stop_requested.set()

    async def wait_until_ready(self) -> None:
        """Return once everything consumes (at once if it does now)."""
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        """Connected, the shared queues declared, every consumer consuming."""
        connection = self._connection
        return self._ready.is_set() and connection is not None and not connection.is_closed

    @property
    def in_flight(self) -> int:
        """Handlers running right now, across all consumers."""
        return sum(d.running for d in self.dispatchers)

    @property
    def deliveries_in_hand(self) -> int:
        """Deliveries taken and not yet settled, across all consumers."""
        return sum(d.in_hand for d in self.dispatchers)

    # --- readiness ---------------------------------------------------------------------------------------

    def _update_ready(self) -> None:
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
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        self.stats.connected = ready

    # --- start -------------------------------------------------------------------------------------------

    async def _start(self, *, first: bool) -> None:
        # At the first start a configuration error (a queue that exists with other arguments) ends
        # run(); anything else, and everything on a reconnect, is logged and retried with back-off.
        declared = self.declared
        connection = await declared.connector(declared.url, name=declared.name)
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
                    interval=declared.depth_interval,
                )
            )
            if declared.schedules:
                runner = CronRunner(
                    list(declared.schedules),
                    namespace=declared.namespace,
                    exchange=declared.exchange,
                    sender=self._sender,
                    clock=declared.clock,
                )
                self.cron = runner
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
        by_broker = [c.queue for c in self.declared.consumers if c.retry == "broker"]
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

    async def _listen_for_commands(self, connection: Connection) -> None:
        await control.listen(
            connection,
            namespace=self.declared.namespace,
            exchange=self.declared.exchange,
            on_command=self._pauses.apply,
            state=lambda: control.report(self.stats),  # asked for by event serve's workers view
        )

    # --- the shared queues -------------------------------------------------------------------------------

    async def _declare_shared(self, connection: Connection, *, first: bool) -> None:
        failures = await topology.declare_each(
            lambda: open_channel(connection, confirms=False), self.declared.shared_plan
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
            await asyncio.sleep(delay_before(attempt, RECONNECT_DELAYS_S))
            attempt += 1
            try:
                failures = await topology.declare_each(
                    lambda: open_channel(connection, confirms=False), self.declared.shared_plan
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
                    delay_before(attempt, RECONNECT_DELAYS_S),
                    failure,
                )

    # --- what the sender and the schedule copies ask of the connection ---------------------------------

    async def _live_connection(self, deadline: float) -> Connection:
        # The sender's source: the run's connection while it lives; the run alone reconnects (a copy
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
        exchange = self.declared.exchange
        api = ManagementApi.for_url(self.declared.url, configured_base(None, os.environ))
        bindings = await api.bindings_from(wire.schedule_exchange_name(exchange))
        return {
            namespace
            for binding in bindings
            if binding.get("destination_type") == "queue"
            and (namespace := wire.delay_queue_namespace(binding.get("destination", ""), exchange))
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

    # --- loss and reconnect ------------------------------------------------------------------------------

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
        url = self.declared.url
        attempt = 0
        while not self._stop_requested.is_set():
            delay = delay_before(attempt, RECONNECT_DELAYS_S)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_requested.wait()
            if self._stop_requested.is_set():
                return
            try:
                await self._start(first=False)
            except EventError as exc:
                log.warning("reconnect attempt %d to %s failed: %s", attempt, redact_url(url), exc)
                continue
            except Exception as exc:  # never die while reconnecting; the traceback shows what to fix
                log.warning(
                    "reconnect attempt %d to %s failed: %r", attempt, redact_url(url), exc, exc_info=True
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

    # --- stop --------------------------------------------------------------------------------------------

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
        for dispatcher in self.dispatchers:
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
        log.info("%s stopped", self.declared.name)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        grace = self.declared.grace
        deadline = loop.time() + grace
        while True:
            tasks = {task for d in self.dispatchers for task in d.tasks}
            if not tasks:
                return
            left = deadline - loop.time()
            if left <= 0 or self._stop_calls > 1:
                break
            await asyncio.wait(tasks, timeout=min(left, 0.1))
        running = {task for d in self.dispatchers for task in d.tasks}
        log.warning(
            "%d handler(s) still running after the %g s grace period: cancelling them",
            len(running),
            grace,
        )
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=5)
