"""Retries back off through the delay levels, reach only the failing consumer, then the dead queue."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from support import Isolation, Probe, eventually

from event import Dead, Message, Publisher, Retry, WorkerPool, wire


async def test_retries_two_runs_three_times_then_dead_and_the_other_consumer_once(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    attempts: list[tuple[int, float]] = []
    others: list[str] = []
    everything: list[tuple[str, str]] = []

    @pool.consumer("app.charge", retries=2)
    async def charge(ctx: object, msg: Message[Any]) -> None:
        attempts.append((msg.attempt, time.monotonic()))
        raise RuntimeError("card declined")

    @pool.consumer("app.charge")
    async def audit(ctx: object, msg: Message[Any]) -> None:
        others.append(msg.routing_key)

    @pool.consumer("#")
    async def firehose(ctx: object, msg: Message[Any]) -> None:
        everything.append((msg.routing_key, msg.delivery_routing_key))

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.charge", {"amount": 5}, message_id="charge-1")

        async def dead() -> bool:
            return await probe.depth(dead_queue) == 1

        await eventually(dead, timeout=25)
        await eventually(lambda: len(attempts) == 3)
        await asyncio.sleep(0.3)

    assert [a for a, _ in attempts] == [1, 2, 3]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(attempts)]
    assert all(4.9 <= gap <= 6.5 for gap in gaps), gaps  # back-off 2 s and 3 s: the 5 s level each
    assert others == ["app.charge"]  # the retries never reached the other consumer
    assert everything == [("app.charge", "app.charge")]  # nor the '#' consumer
    [copy] = await probe.take_all(dead_queue)
    headers = copy.header.properties.headers
    assert copy.header.properties.message_id == "charge-1"
    assert headers["event-retries"] == 2
    assert headers["event-queue"] == f"{iso.namespace}:charge"
    assert headers["event-routing-key"] == "app.charge"
    assert headers["event-error"] == "RuntimeError: card declined"
    assert "CC" not in headers
    assert copy.body == b'{"amount":5}'


async def test_retry_signal_and_dead_signal(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    seen: list[tuple[str, int]] = []

    @pool.consumer("app.job", retries=5)
    async def job(ctx: object, msg: Message[Any]) -> None:
        seen.append((msg.body["kind"], msg.attempt))
        if msg.body["kind"] == "dead":
            raise Dead("invalid account")
        if msg.attempt == 1:
            raise Retry("not yet", in_=1)

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.job", {"kind": "retry"})
        await publisher.publish("app.job", {"kind": "dead"})
        await eventually(lambda: ("retry", 2) in seen, timeout=15)

        async def dead() -> bool:
            return await probe.depth(dead_queue) == 1

        await eventually(dead)
    assert sorted(seen) == [("dead", 1), ("retry", 1), ("retry", 2)]
    [copy] = await probe.take_all(dead_queue)
    assert copy.header.properties.headers["event-error"] == "Dead: invalid account"


async def test_a_message_that_failed_twice_in_ruby_continues_with_attempt_three(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    attempts: list[int] = []

    @pool.consumer("app.send_email", retries=5)
    async def send_email(ctx: object, msg: Message[Any]) -> None:
        attempts.append(msg.attempt)

    # As hutch-schedule delivers its second retry: x-death counted twice, routed by the schedule key.
    death = {
        "count": 2,
        "queue": f"{iso.namespace}:hutch_delay_queue_5s",
        "reason": "expired",
        "exchange": f"{iso.exchange}.schedule",
        "routing-keys": [f"{iso.exchange}.schedule.5s", "app.send_email"],
    }
    async with pool.running():
        await probe.publish(
            iso.exchange,
            "app.send_email",
            b'{"to": "a@b.c"}',
            content_type="application/json",
            delivery_mode=2,
            message_id="ruby-1",
            headers={"CC": ["app.send_email"], "x-death": [death]},
        )
        await eventually(lambda: attempts == [3])


async def test_a_retry_whose_copy_cannot_be_stored_stays_in_its_queue_until_the_pool_redeclares(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, management: Any
) -> None:
    pool = WorkerPool(**pool_kwargs)
    runs: list[bool] = []

    @pool.consumer("app.fragile", retries=3)
    async def fragile(ctx: object, msg: Message[Any]) -> None:
        runs.append(msg.redelivered)
        raise RuntimeError("fails")

    park_queue = wire.park_queue_name(iso.namespace, iso.exchange, 5)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        management.delete_queue(park_queue)  # an operator's mistake
        await publisher.publish("app.fragile", {})
        await eventually(lambda: len(runs) >= 2, timeout=15)  # handed back, redelivered, failing again
        # The returned copy made the pool declare its shared queues again: the next copy is stored.
        await eventually(lambda: pool.ready, timeout=15)

        async def stored() -> bool:
            return await probe.depth(park_queue) == 1

        await eventually(stored, timeout=15)
    assert runs[0] is False and runs[1] is True
