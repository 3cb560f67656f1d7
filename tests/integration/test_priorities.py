"""Priorities on the real broker: 1,000 messages of priority 0, then 10 of priority 9, wait in the queue of
a stopped consumer with max_priority=9; started, it runs the 10 first. Classic queues everywhere, quorum
queues from RabbitMQ 4.0 (run the suite against cmd/rabbitmq-4.3 for those)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import Isolation, Probe, eventually

from event import Dead, Message, Publisher, WorkerPool, wire


def priority_pool(pool_kwargs: dict[str, Any], queue_type: str, order: list[int]) -> WorkerPool:
    pool = WorkerPool(**pool_kwargs, queue_type=queue_type)

    @pool.consumer("app.job", max_priority=9, max_concurrency=1, prefetch=20)
    async def job(ctx: object, msg: Message[Any]) -> None:
        order.append(msg.body["n"])
        if msg.body.get("dead"):
            raise Dead("to see the dead copy's priority")

    return pool


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_the_10_of_priority_9_run_before_the_1000_of_priority_0(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, queue_type: str
) -> None:
    if queue_type == "quorum" and await probe.broker_version() < (4, 0):
        pytest.skip("quorum queues order by priority from RabbitMQ 4.0 (run against cmd/rabbitmq-4.3)")
    order: list[int] = []
    queue = f"{iso.namespace}:job"
    async with priority_pool(pool_kwargs, queue_type, order).running():
        pass  # declares the queue, then stops: its consumer is gone
    async with Publisher(**pool_kwargs) as publisher:
        await asyncio.gather(*(publisher.publish("app.job", {"n": n}, priority=0) for n in range(1000)))
        await asyncio.gather(*(publisher.publish("app.job", {"n": n}, priority=9) for n in range(1000, 1010)))
        await eventually(lambda: _depth(probe, queue, 1010))
        async with priority_pool(pool_kwargs, queue_type, order).running():
            await eventually(lambda: len(order) == 1010, timeout=60)
    assert sorted(order[:10]) == list(range(1000, 1010)), order[:20]
    assert sorted(order[10:]) == list(range(1000))


async def _depth(probe: Probe, queue: str, wanted: int) -> bool:
    return await probe.depth(queue) == wanted


async def test_delayed_and_dead_copies_keep_the_priority(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    order: list[int] = []
    async with priority_pool(pool_kwargs, "classic", order).running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish_in(60, "app.job", {"n": 1}, priority=7)
        park = wire.park_queue_name(iso.namespace, iso.exchange, 60)
        [parked] = await probe.take_all(park)  # taken off before it comes due
        assert parked.header.properties.priority == 7
        await publisher.publish("app.job", {"n": 2, "dead": True}, priority=8)
        dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
        await eventually(lambda: _depth(probe, dead_queue, 1))
        [dead] = await probe.take_all(dead_queue)
    assert dead.header.properties.priority == 8
    assert order == [2]
