"""Cron rules on an injected clock: next ticks, time zones, both DST transitions, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from event import ConfigurationError, WorkerPool
from event.cron import define_schedule, last_tick_at_or_before, next_tick, next_ticks, ticks_to_fire

BERLIN = ZoneInfo("Europe/Berlin")


def test_next_tick_is_strictly_after_the_given_moment() -> None:
    every5 = define_schedule("*/5 * * * *", "app.report")
    at = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    assert next_tick(every5, at) == datetime(2026, 1, 1, 10, 10, tzinfo=UTC)
    assert next_tick(every5, at - timedelta(microseconds=1)) == at


def test_seconds_field_and_aliases() -> None:
    every2s = define_schedule("* * * * * */2", "app.tick")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_ticks(every2s, start, 3) == [start + timedelta(seconds=s) for s in (2, 4, 6)]
    hourly = define_schedule("@hourly", "app.tick")
    assert next_tick(hourly, start + timedelta(minutes=1)) == start + timedelta(hours=1)


def test_ticks_follow_the_time_zone() -> None:
    morning = define_schedule("0 9 * * *", "app.report", tz="Europe/Berlin")
    tick = next_tick(morning, datetime(2026, 7, 1, tzinfo=UTC))
    assert tick.astimezone(UTC) == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)  # 09:00 CEST


def test_spring_forward_moves_a_missing_time_to_the_next_valid_one() -> None:
    # 2026-03-29 02:00 -> 03:00 in Berlin: 02:30 does not exist that night.
    nightly = define_schedule("30 2 * * *", "app.nightly", tz="Europe/Berlin")
    ticks = next_ticks(nightly, datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN), 2)
    assert [t.isoformat() for t in ticks] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_fall_back_runs_a_repeated_time_twice() -> None:
    # 2026-10-25 03:00 -> 02:00 in Berlin: 02:30 happens twice, and croniter fires on both.
    nightly = define_schedule("30 2 * * *", "app.nightly", tz="Europe/Berlin")
    ticks = next_ticks(nightly, datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN), 3)
    assert [t.isoformat() for t in ticks] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ]
    assert len({nightly.message_id(t) for t in ticks}) == 3  # distinct ids: the UTC instant differs


def test_catch_up_skip_fires_nothing_missed() -> None:
    every_minute = define_schedule("* * * * *", "app.tick")
    last = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert ticks_to_fire(every_minute, last, last + timedelta(minutes=30, seconds=5)) == []


def test_catch_up_last_fires_the_latest_missed_tick_once() -> None:
    every_minute = define_schedule("* * * * *", "app.tick", catch_up="last")
    last = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    now = last + timedelta(minutes=30, seconds=5)
    assert ticks_to_fire(every_minute, last, now) == [datetime(2026, 1, 1, 10, 30, tzinfo=UTC)]
    assert ticks_to_fire(every_minute, now.replace(second=0), now) == []  # that tick already fired
    assert ticks_to_fire(every_minute, None, now) == []  # never ran: nothing was missed
    assert last_tick_at_or_before(every_minute, last) == last


def test_message_id_is_deterministic_per_schedule_and_tick() -> None:
    report = define_schedule("0 * * * *", "app.report", name="hourly-report")
    tick = datetime(2026, 1, 1, 10, tzinfo=BERLIN)
    assert report.message_id(tick) == "hourly-report@2026-01-01T09:00:00+00:00"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"expression": "61 * * * *"}, "cron expression '61 \\* \\* \\* \\*' is not valid"),
        ({"expression": "every day"}, "is not valid"),
        ({"tz": "Mars/Olympus"}, "time zone 'Mars/Olympus'"),
        ({"catch_up": "all"}, "catch_up"),
        ({"routing_key": "app.*"}, "wildcard"),
        ({"payload": {1, 2}}, "JSON-serialisable"),
    ],
)
def test_bad_schedules_fail_at_decoration(kwargs: dict[str, object], words: str) -> None:
    pool = WorkerPool("amqp://guest:guest@127.0.0.1:5672/")
    args: dict[str, object] = {"expression": "* * * * *", "routing_key": "app.tick", **kwargs}
    with pytest.raises(ConfigurationError, match=words):

        @pool.cron(args.pop("expression"), args.pop("routing_key"), **args)  # type: ignore[arg-type]
        async def handler(ctx: object, msg: object) -> None: ...


def test_cron_registers_the_schedule_and_its_consumer() -> None:
    pool = WorkerPool("amqp://guest:guest@127.0.0.1:5672/", namespace="ns")

    @pool.cron("0 3 * * *", "app.cleanup", payload={"days": 30}, tz="Europe/Berlin", retries=1)
    async def cleanup(ctx: object, msg: object) -> None: ...

    [schedule] = pool.schedules
    assert (schedule.routing_key, schedule.payload, schedule.tz.key) == (
        "app.cleanup",
        {"days": 30},
        "Europe/Berlin",
    )
    [consumer] = pool.consumers
    assert (consumer.queue, consumer.routing_keys, consumer.retries) == ("ns:cleanup", ("app.cleanup",), 1)
    pool.schedule("0 4 * * *", "app.other")
    with pytest.raises(ConfigurationError, match="exists already"):
        pool.schedule("0 4 * * *", "app.other")


def test_cron_takes_every_schedule_option_and_refuses_a_misspelt_one() -> None:
    pool = WorkerPool("amqp://guest:guest@127.0.0.1:5672/", namespace="ns")

    @pool.cron("0 3 * * *", "app.cleanup", headers={"x-source": "cron"}, catch_up="last", max_concurrency=1)
    async def cleanup(ctx: object, msg: object) -> None: ...

    [schedule] = pool.schedules
    assert (schedule.headers, schedule.catch_up) == ({"x-source": "cron"}, "last")
    assert pool.consumers[0].max_concurrency == 1
    with pytest.raises(TypeError, match="'time_zone'"):
        pool.cron("0 3 * * *", "app.other", time_zone="UTC")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'every'"):
        pool.schedule("0 3 * * *", "app.other", every=3)  # type: ignore[call-arg]
