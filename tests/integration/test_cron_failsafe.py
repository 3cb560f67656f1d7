"""One schedule whose publish fails neither stops nor doubles the others, and comes back once it works."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from datetime import datetime

import pytest
from support import Isolation

from event.connect import close_quietly, connect
from event.cron import CronRunner, Schedule, define_schedule
from event.sending import Sender


async def test_a_failing_schedule_is_restarted_while_the_others_keep_firing(
    amqp_url: str, iso: Isolation, caplog: pytest.LogCaptureFixture
) -> None:
    fired: list[tuple[str, datetime]] = []
    broken = {"app.bad"}

    async def publish(schedule: Schedule, tick: datetime) -> None:
        if schedule.routing_key in broken:
            raise ConnectionError(f"the broker refused {schedule.routing_key}")  # as a failing send would
        fired.append((schedule.routing_key, tick))

    connection = await connect(amqp_url, name=f"cron-failsafe-{iso.namespace}")
    runner = CronRunner(
        [
            define_schedule("* * * * * *", "app.good", name="good"),
            define_schedule("* * * * * *", "app.bad", name="bad"),
        ],
        namespace=iso.namespace,
        exchange=iso.exchange,
        sender=Sender.over(connection),
        publish=publish,
        restart_delays=(0.5, 1.0),
    )
    caplog.set_level(logging.ERROR, logger="event.cron")
    task = asyncio.create_task(runner.run(connection))
    try:
        await asyncio.sleep(4)
        assert runner.is_leader  # a failing schedule does not cost the leadership
        broken.clear()
        cleared = datetime.now().astimezone()
        await asyncio.sleep(4)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close_quietly(connection)
    after_stop = len(fired)
    await asyncio.sleep(1.5)
    assert len(fired) == after_stop  # nothing fires once the runner (and its lock) is gone

    by_key: dict[str, list[datetime]] = {"app.good": [], "app.bad": []}
    for key, tick in fired:
        by_key[key].append(tick)
    assert all(count == 1 for count in Counter(fired).values()), fired  # no tick twice
    good = by_key["app.good"]
    assert len(good) >= 7, good  # ~8 s of per-second ticks, through the other's failures
    assert all((b - a).total_seconds() == 1 for a, b in itertools.pairwise(good)), good  # none missed
    bad = by_key["app.bad"]
    assert bad and min(bad) >= cleared.replace(microsecond=0), bad  # only once it works again
    assert len(bad) >= 2  # and it keeps firing after its restart
    errors = [
        r for r in caplog.records if r.levelno == logging.ERROR and "cron schedule bad" in r.getMessage()
    ]
    assert errors, caplog.text
    assert "the others go on" in errors[0].getMessage()
    assert not [r for r in caplog.records if "cron schedule good" in r.getMessage()]


async def test_schedules_stop_the_moment_the_leader_lock_is_lost(amqp_url: str, iso: Isolation) -> None:
    fired: list[datetime] = []

    async def publish(schedule: Schedule, tick: datetime) -> None:
        fired.append(tick)

    connection = await connect(amqp_url, name=f"cron-lock-{iso.namespace}")
    runner = CronRunner(
        [define_schedule("* * * * * *", "app.tick", name="tick")],
        namespace=iso.namespace,
        exchange=iso.exchange,
        sender=Sender.over(connection),
        publish=publish,
    )
    task = asyncio.create_task(runner.run(connection))
    try:
        await asyncio.sleep(2.5)
        assert runner.is_leader and fired
        await connection.close()  # the lock (an exclusive queue of this connection) is gone with it
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)
        assert not runner.is_leader
        stopped_at = len(fired)
        await asyncio.sleep(1.5)
        assert len(fired) == stopped_at
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close_quietly(connection)
