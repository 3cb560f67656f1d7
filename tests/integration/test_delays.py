"""Delayed publishing over TTL queues of hutch-schedule's levels: never early, at most 1 s after its level.

These wait for the real 5 s and 10 s levels; the one test of a longer delay says why it shortens it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import hutch_schedule
import pytest
from support import Isolation, Probe, eventually

from event import Message, Publisher, WorkerPool, wire


async def test_delayed_messages_arrive_no_earlier_than_asked_and_within_a_second_of_their_level(
    pool_kwargs: dict[str, Any],
) -> None:
    pool = WorkerPool(**pool_kwargs)
    arrived: dict[str, float] = {}

    @pool.consumer("app.later")
    async def later(ctx: object, msg: Message[Any]) -> None:
        arrived[msg.body["name"]] = time.monotonic()

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        sent = time.monotonic()
        await asyncio.gather(
            publisher.publish_in(3, "app.later", {"name": "3s"}),
            publisher.publish_in(timedelta(seconds=7), "app.later", {"name": "7s"}),
            publisher.publish_at(datetime.now(UTC) + timedelta(seconds=4), "app.later", {"name": "at+4s"}),
            publisher.publish_in(0, "app.later", {"name": "now"}),
        )
        await eventually(lambda: len(arrived) == 4, timeout=20)

    waited = {name: at - sent for name, at in arrived.items()}
    assert waited["now"] < 1
    for name, asked, level in [("3s", 3, 5), ("7s", 7, 10), ("at+4s", 4, 5)]:
        assert asked <= waited[name] <= level + 1, (name, waited[name])


async def test_a_delayed_message_carries_the_spec_properties(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    now = 1_800_000_000.0
    async with Publisher(**pool_kwargs, clock=lambda: now) as publisher:
        await publisher.publish_in(timedelta(days=2), "app.report", {"n": 1}, headers={"trace": "t"})
        await publisher.publish_in(7, "app.report", {"n": 2})
    [long] = await probe.take_all(wire.park_queue_name(iso.namespace, iso.exchange, 10800))
    [short] = await probe.take_all(wire.park_queue_name(iso.namespace, iso.exchange, 10))
    assert long.header.properties.expiration == "10800000"
    assert long.header.properties.headers == {
        "trace": "t",
        "CC": ["app.report"],
        "event-routing-key": "app.report",
        "event-retries": 0,
        "event-foreign-failures": 0,
        "event-park-to": "exchange",
        "event-park-in": wire.park_queue_name(iso.namespace, iso.exchange, 10800),
        "event-due-at": int(now * 1000) + 2 * 86_400_000,
    }
    assert long.routing_key == short.routing_key == "app.report"  # kept when due (docs/wire-format.md)
    assert long.header.properties.delivery_mode == 2
    assert long.header.properties.content_type == "application/json"
    assert short.header.properties.expiration == "10000"
    assert "event-due-at" not in short.header.properties.headers


async def test_a_long_delay_is_parked_again_until_due(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    # Waiting out a 3 h level is not a test; a message whose event-due-at lies 3.5 s ahead when it
    # reaches the consumer is exactly what the 3 h level hands over for a delay of 3 h + 3.5 s.
    pool = WorkerPool(**pool_kwargs)
    handled: list[tuple[float, Message[Any]]] = []

    @pool.consumer("app.report")
    async def report(ctx: object, msg: Message[Any]) -> None:
        handled.append((time.time(), msg))

    async with pool.running():
        due = time.time() + 3.5
        headers = wire.delayed_headers({}, "app.report", due_at_ms=int(due * 1000))
        await probe.publish(iso.exchange, "app.report", b'{"n": 1}', content_type="application/json",
                            delivery_mode=2, message_id="long-1", headers=headers)  # fmt: skip
        await eventually(lambda: len(handled) == 1, timeout=15)
        await asyncio.sleep(0.5)
    [(at, msg)] = handled
    assert at >= due
    assert msg.routing_key == "app.report"
    assert msg.attempt == 1  # a re-park is not a retry
    assert msg.delivery_routing_key == "app.report"  # the re-park kept it
    assert msg.headers["x-death"][0]["queue"] == wire.park_queue_name(iso.namespace, iso.exchange, 5)


async def test_a_due_time_beyond_the_horizon_goes_to_the_dead_queue_named(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    """Another client's event-due-at in the year 33,658 would be parked again every 3 hours for ever."""
    pool = WorkerPool(**pool_kwargs)
    handled: list[Message[Any]] = []

    @pool.consumer("app.report")
    async def report(ctx: object, msg: Message[Any]) -> None:
        handled.append(msg)

    due_ms = 1_000_000_000_000_000  # 2001-09-09 in microseconds, read as milliseconds: year 33,658
    async with pool.running():
        headers = wire.delayed_headers({}, "app.report", due_at_ms=due_ms)
        await probe.publish(iso.exchange, "app.report", b'{"n": 1}', content_type="application/json",
                            delivery_mode=2, message_id="far-1", headers=headers)  # fmt: skip
        dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)

        async def dead_queued() -> bool:
            return await probe.depth(dead_queue) == 1

        await eventually(dead_queued, timeout=15)
    [dead] = await probe.take_all(dead_queue)
    error = dead.header.properties.headers["event-error"]
    error = error.decode() if isinstance(error, bytes) else error
    assert f"event-due-at={due_ms}" in error and "beyond the horizon of 732 days" in error, error
    assert handled == []
    for level in wire.LEVELS:  # not parked, not even once
        assert await probe.depth(wire.park_queue_name(iso.namespace, iso.exchange, level)) == 0


@pytest.mark.parametrize("hutch_schedule_first", [True, False], ids=["hutch-schedule first", "event first"])
async def test_hutch_schedule_declares_its_delay_queues_beside_ours(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, hutch_schedule_first: bool
) -> None:
    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.a")
    async def a(ctx: object, msg: Message[Any]) -> None:
        pass

    channel = await probe.channel()
    if hutch_schedule_first:
        await hutch_schedule.declare(channel, iso.namespace, iso.exchange)
    async with Publisher(**pool_kwargs), pool.running():
        pass
    await hutch_schedule.declare(channel, iso.namespace, iso.exchange)  # no PRECONDITION_FAILED


async def test_bad_delays_and_payloads_fail_before_anything_is_sent(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    async with Publisher(**pool_kwargs) as publisher:
        with pytest.raises(ValueError, match="delay must be"):
            await publisher.publish_in(-1, "app.a", {})
        with pytest.raises(ValueError, match="delay must be"):
            await publisher.publish_in(float("nan"), "app.a", {})
        with pytest.raises(ValueError, match="aware datetime"):
            await publisher.publish_at(datetime(2030, 1, 1), "app.a", {})
        with pytest.raises(TypeError, match=r"'app\.a'.*object"):
            await publisher.publish_in(5, "app.a", {"when": object()})
        with pytest.raises(ValueError, match="beyond the horizon of 732 days"):
            await publisher.publish_in(timedelta(days=733), "app.a", {})
        with pytest.raises(ValueError, match="beyond the horizon of 732 days"):
            await publisher.publish_at(datetime.now(UTC) + timedelta(days=800), "app.a", {})
    assert await probe.depth(wire.park_queue_name(iso.namespace, iso.exchange, 5)) == 0
