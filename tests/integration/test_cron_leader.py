"""Three workers running one schedule publish each tick once; when the leader dies another takes over."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from support import Isolation, Management, Probe, eventually

from event import WorkerPool


def leads(pool: WorkerPool) -> bool:
    """Whether the pool's current run holds the cron lock (its run's private state: the test's only way
    to tell the leader from the others)."""
    run = pool._run
    return run is not None and run.cron is not None and run.cron.is_leader


def three_pools(pool_kwargs: dict[str, Any], iso: Isolation) -> list[WorkerPool]:
    pools = []
    for n in range(3):
        pool = WorkerPool(**pool_kwargs, name=f"cron-{iso.namespace}-{n}")
        pool.schedule("* * * * * *", "app.tick", payload={"from": "cron"}, name="every-second")
        pools.append(pool)
    return pools


@contextlib.asynccontextmanager
async def all_running(pools: list[WorkerPool]) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for pool in pools:
            await stack.enter_async_context(pool.running())
        yield


async def tick_queue(probe: Probe, iso: Isolation) -> str:
    channel = await probe.channel()
    queue = f"{iso.namespace}:ticks"
    await channel.exchange_declare(iso.exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(queue, durable=True)
    await channel.queue_bind(queue, iso.exchange, routing_key="app.tick")
    return queue


def tick_times(messages: list[Any]) -> list[datetime]:
    return sorted(datetime.fromisoformat(m.header.properties.message_id.split("@", 1)[1]) for m in messages)


async def test_three_workers_publish_each_tick_once(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    queue = await tick_queue(probe, iso)
    pools = three_pools(pool_kwargs, iso)
    async with all_running(pools):
        await asyncio.sleep(10)
        leaders = [leads(pool) for pool in pools]
    messages = await probe.take_all(queue)
    ids = Counter(m.header.properties.message_id for m in messages)
    assert all(count == 1 for count in ids.values()), ids  # never two for one tick
    assert 9 <= len(messages) <= 11, len(messages)
    assert sum(leaders) == 1
    assert all(m.body == b'{"from":"cron"}' for m in messages)
    ticks = tick_times(messages)
    assert all((b - a).total_seconds() == 1 for a, b in itertools.pairwise(ticks))


async def test_another_worker_takes_over_when_the_leaders_connection_dies(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, management: Management
) -> None:
    queue = await tick_queue(probe, iso)
    pools = three_pools(pool_kwargs, iso)
    async with all_running(pools):
        await asyncio.sleep(3)
        [leader] = [pool for pool in pools if leads(pool)]

        def closed() -> bool:
            return management.close_connections(leader.name) == 1

        await eventually(closed, timeout=15, interval=0.2)
        await asyncio.sleep(6)
        now_leading = [pool for pool in pools if leads(pool)]
    messages = await probe.take_all(queue)
    ids = Counter(m.header.properties.message_id for m in messages)
    assert all(count == 1 for count in ids.values()), ids
    assert len(now_leading) == 1
    ticks = tick_times(messages)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    assert max(gaps) <= 3, gaps  # at most 2 ticks missed during the takeover
