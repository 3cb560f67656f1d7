"""Cron schedules that publish an event on every tick, once per tick however many workers run them.

The rules are pure functions of a clock (:func:`next_tick`, :func:`ticks_to_fire`), tested on their own.
:class:`CronRunner` runs them: one worker at a time is the leader, chosen by RabbitMQ itself (the
holder of an exclusive queue; the broker deletes it when the holder's connection dies, and another
worker's next attempt takes it). The leader keeps the last tick it fired in a one-message queue, so
a new leader neither fires that tick again nor, with ``catch_up="last"``, forgets a missed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypedDict, Unpack
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import croniter

from event import driver, wire
from event.connect import Channel, Connection, close_quietly, open_channel
from event.errors import ConfigurationError
from event.pacing import RESTART_DELAYS_S, delay_before
from event.sending import Sender, properties

log = logging.getLogger(__name__)

CatchUp = Literal["skip", "last"]
CANDIDATE_RETRY_S = 0.5


@dataclass(frozen=True)
class Schedule:
    """One schedule: publish ``payload`` with ``routing_key`` on every tick of ``expression`` in ``tz``."""

    name: str
    expression: str
    routing_key: str
    payload: Any
    tz: ZoneInfo
    catch_up: CatchUp = "skip"
    headers: dict[str, Any] = field(default_factory=dict)

    def message_id(self, tick: datetime) -> str:
        """Deterministic per tick, so consumers can deduplicate: ``<name>@<tick in UTC>``."""
        return f"{self.name}@{tick.astimezone(UTC).isoformat()}"


class ScheduleOptions(TypedDict, total=False):
    """A schedule's options, their one list: :func:`define_schedule` gives each left out its default,
    :meth:`event.WorkerPool.schedule` and :meth:`event.WorkerPool.cron` take them as they are."""

    payload: Any  # default None: the message body is JSON null
    tz: str  # default "UTC": the zone the expression's fields are read in
    catch_up: str  # default "skip"; "last" publishes the latest missed tick when a worker comes back
    name: str | None  # default "<routing key>@<expression>": the message ids' prefix, one per pool
    headers: Mapping[str, Any] | None  # default none: extra AMQP headers on every tick's message


def define_schedule(expression: str, routing_key: str, **options: Unpack[ScheduleOptions]) -> Schedule:
    """Validate a schedule now, at decoration time, naming the expression or time zone at fault."""
    unknown = sorted(set(options) - ScheduleOptions.__optional_keys__)
    if unknown:
        raise TypeError(
            f"define_schedule() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: the "
            f"schedule options are {', '.join(sorted(ScheduleOptions.__optional_keys__))}"
        )
    payload = options.get("payload")
    tz = options.get("tz", "UTC")
    catch_up = options.get("catch_up", "skip")
    name = options.get("name")
    headers = options.get("headers")
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ConfigurationError(
            f"cron expression {expression!r} is not valid (croniter: 5 fields, an optional 6th for seconds, "
            f"or an alias such as @hourly)"
        )
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"time zone {tz!r} of cron {expression!r} is unknown") from exc
    if catch_up not in ("skip", "last"):
        raise ConfigurationError(
            f"catch_up of cron {expression!r} must be 'skip' or 'last', not {catch_up!r}"
        )
    wire.validate_routing_key(routing_key, pattern=False)
    try:
        orjson.dumps(payload)
    except TypeError as exc:
        raise ConfigurationError(f"payload of cron {expression!r} is not JSON-serialisable: {exc}") from exc
    chosen = name or f"{routing_key}@{expression}"
    return Schedule(chosen, expression, routing_key, payload, zone, catch_up, dict(headers or {}))  # type: ignore[arg-type]


def next_tick(schedule: Schedule, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (an aware datetime), in the schedule's time zone."""
    tick: datetime = croniter(schedule.expression, after.astimezone(schedule.tz)).get_next(datetime)
    return tick


def next_ticks(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` ticks after ``after``."""
    ticks, at = [], after
    for _ in range(count):
        at = next_tick(schedule, at)
        ticks.append(at)
    return ticks


def last_tick_at_or_before(schedule: Schedule, moment: datetime) -> datetime:
    """The latest tick no later than ``moment``."""
    tick: datetime = croniter(
        schedule.expression, (moment + timedelta(microseconds=1)).astimezone(schedule.tz)
    ).get_prev(datetime)
    return tick


def ticks_to_fire(schedule: Schedule, last_fired: datetime | None, now: datetime) -> list[datetime]:
    """Ticks to publish when a leader starts at ``now``: the missed one for ``catch_up="last"``, else none.

    A tick at or before ``last_fired`` is never fired again.
    """
    if schedule.catch_up != "last" or last_fired is None:
        return []
    latest = last_tick_at_or_before(schedule, now)
    return [latest] if latest > last_fired else []


def state_queue_name(namespace: str, exchange: str, schedule: Schedule) -> str:
    """The one-message queue that remembers a schedule's last fired tick."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", schedule.name)[:120]
    return wire.queue_name(namespace, f"{exchange}_cron_{safe}")


def leader_queue_name(namespace: str, exchange: str) -> str:
    """The exclusive queue whose holder is the cron leader of a namespace."""
    return wire.queue_name(namespace, f"{exchange}_cron_leader")


Publish = Callable[[Schedule, datetime], Awaitable[None]]
Clock = Callable[[], float]


class CronRunner:
    """Competes for leadership on one connection and, while leader, fires every schedule on time.

    Each schedule runs in a task of its own: one whose publish fails is logged at error and started
    again after a back-off, while the others go on. The leader queue's channel is the lock: the
    schedules fire only while it is open, and all stop the moment it closes.
    """

    def __init__(
        self,
        schedules: list[Schedule],
        *,
        namespace: str,
        exchange: str,
        sender: Sender,
        publish: Publish | None = None,
        clock: Clock = time.time,
        restart_delays: tuple[float, ...] = RESTART_DELAYS_S,
    ) -> None:
        self.schedules = schedules
        self.namespace = namespace
        self.exchange = exchange
        self.sender = sender  # ticks (unless ``publish`` says otherwise) and the last-tick state
        self.publish = publish or self._publish_tick
        self.clock = clock
        self.restart_delays = restart_delays
        self.is_leader = False
        # The last tick each schedule fired here: a restart never fires it again, even when its
        # state queue could not be written after the publish.
        self._fired: dict[str, datetime] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    async def run(self, connection: Connection) -> None:
        """Until cancelled or the connection dies: wait to lead, then fire ticks while leading."""
        while not connection.is_closed:
            channel = await open_channel(connection, confirms=False)
            try:
                await channel.queue_declare(
                    leader_queue_name(self.namespace, self.exchange), exclusive=True, auto_delete=True
                )
            except driver.ResourceLocked:
                await asyncio.sleep(CANDIDATE_RETRY_S)  # another worker leads; its channel is closed now
                continue
            try:
                await self._lead(connection, channel)
            finally:
                await close_quietly(channel)
            if not connection.is_closed:
                log.error("this worker lost the cron leadership (its channel closed); competing again")

    async def _lead(self, connection: Connection, lock: Channel) -> None:
        self.is_leader = True
        log.info("this worker now fires the %d cron schedule(s)", len(self.schedules))
        tasks = [asyncio.create_task(self._keep_firing(connection, s)) for s in self.schedules]
        watch = {lock.closing, connection.closing}
        try:
            await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in watch:  # observers only: retrieve what they saw, or stop them
                if future.done() and not future.cancelled():
                    future.exception()
                else:
                    future.cancel()
            self.is_leader = False  # before the tasks end: nothing fires once the lock is gone
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep_firing(self, connection: Connection, schedule: Schedule) -> None:
        failures = 0
        while self.is_leader and not connection.is_closed:
            fired_before = self._fired.get(schedule.name)
            try:
                await self._fire(connection, schedule)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if connection.is_closed:
                    return  # the connection died: the pool reconnects and starts another runner
                if self._fired.get(schedule.name) != fired_before:
                    failures = 0  # it fired since the last restart: the back-off starts over
                delay = delay_before(failures, self.restart_delays)
                failures += 1
                log.error(
                    "cron schedule %s (%s) failed: %s: %s; starting it again in %g s, the others go on",
                    schedule.name, schedule.routing_key, type(exc).__name__, exc, delay,
                    extra={"schedule": schedule.name, "routing_key": schedule.routing_key},
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _fire(self, connection: Connection, schedule: Schedule) -> None:
        state = state_queue_name(self.namespace, self.exchange, schedule)
        channel = await open_channel(connection, confirms=False)
        try:
            await channel.queue_declare(state, durable=True, arguments={"x-max-length": 1})
            last = _latest(await _read_state(channel, state), self._fired.get(schedule.name))
            now = self._now()
            for tick in ticks_to_fire(schedule, last, now):
                await self._publish(state, schedule, tick)
                last = tick
            cursor = max(now, last) if last else now
            while self.is_leader:
                tick = next_tick(schedule, cursor)
                await asyncio.sleep(max(0.0, tick.timestamp() - self.clock()))
                if not self.is_leader:
                    return
                await self._publish(state, schedule, tick)
                cursor = tick
        finally:
            await close_quietly(channel)

    async def _publish(self, state: str, schedule: Schedule, tick: datetime) -> None:
        await self.publish(schedule, tick)
        self._fired[schedule.name] = tick
        body = orjson.dumps({"schedule": schedule.name, "tick": tick.astimezone(UTC).isoformat()})
        await self.sender.send("", state, body, driver.Properties(delivery_mode=wire.PERSISTENT))

    async def _publish_tick(self, schedule: Schedule, tick: datetime) -> None:
        props = properties(
            message_id=schedule.message_id(tick), headers=schedule.headers or None, now=self.clock()
        )
        await self.sender.send(self.exchange, schedule.routing_key, orjson.dumps(schedule.payload), props)


def _latest(*ticks: datetime | None) -> datetime | None:
    known = [t for t in ticks if t is not None]
    return max(known) if known else None


async def _read_state(channel: Channel, queue: str) -> datetime | None:
    got = await channel.basic_get(queue, no_ack=False)
    if got is None:
        return None
    channel.basic_nack(got.delivery_tag, requeue=True)
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return datetime.fromisoformat(orjson.loads(got.body)["tick"])
    return None
