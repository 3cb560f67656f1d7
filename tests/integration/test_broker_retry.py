"""retry="broker": RabbitMQ 4.3's delayed retry on a quorum queue instead of park queues."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from support import Isolation, Probe, eventually

from event import ConfigurationError, Message, Publisher, WorkerPool, wire


async def test_an_older_broker_is_a_clear_error_at_start(pool_kwargs: dict[str, Any], probe: Probe) -> None:
    if await probe.broker_version() >= (4, 3):
        pytest.skip("this broker has the delayed retry")
    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.x", queue_type="quorum", retry="broker")
    async def x(ctx: object, msg: Message[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match=r'retry="broker", which needs RabbitMQ 4\.3 or later'):
        async with pool.running():
            pass


async def test_failures_wait_on_the_broker_then_succeed_or_go_dead_with_our_headers(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    if await probe.broker_version() < (4, 3):
        pytest.skip("RabbitMQ 3.x has no delayed retry on quorum queues: run against 4.3 (cmd/rabbitmq-4.3)")
    count = 300
    rng = random.Random(7)
    twice = set(rng.sample(range(count), count // 10))  # fail twice, then succeed
    always = set(rng.sample(sorted(set(range(count)) - twice), count // 100))  # fail every time
    pool = WorkerPool(**pool_kwargs)
    runs: Counter[int] = Counter()
    seen_at: dict[int, list[float]] = {}
    attempts: dict[int, list[int]] = {}

    @pool.consumer("app.flaky", queue_type="quorum", retry="broker", retries=3, backoff=lambda n: 1.0)
    async def flaky(ctx: object, msg: Message[Any]) -> None:
        n = msg.body["n"]
        runs[n] += 1
        seen_at.setdefault(n, []).append(time.monotonic())
        attempts.setdefault(n, []).append(msg.attempt)
        if n in always or (n in twice and runs[n] <= 2):
            raise RuntimeError(f"job {n} failed")

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await asyncio.gather(*(publisher.publish("app.flaky", {"n": n}) for n in range(count)))

        async def settled() -> bool:
            done = all(runs[n] == 3 for n in twice) and all(runs[n] >= 1 for n in range(count))
            return done and await probe.depth(dead_queue) == len(always)

        await eventually(settled, timeout=60)
        await asyncio.sleep(1.5)  # nothing more comes
    assert all(runs[n] == 1 for n in range(count) if n not in twice | always)
    assert all(runs[n] == 3 and attempts[n] == [1, 2, 3] for n in twice)
    assert all(runs[n] == 4 and attempts[n] == [1, 2, 3, 4] for n in always)  # 1 + 3 retries
    for n in twice | always:  # the broker waited min * count (1 s, 2 s, ...), capped at max (1 s here)
        gaps = [b - a for a, b in zip(seen_at[n], seen_at[n][1:], strict=False)]
        assert all(gap >= 0.95 for gap in gaps), (n, gaps)
    dead = await probe.take_all(dead_queue)
    assert sorted(orjson.loads(m.body)["n"] for m in dead) == sorted(always)
    for message in dead:
        headers = message.header.properties.headers
        error = headers["event-error"]
        assert "failed" in (error.decode() if isinstance(error, bytes) else error)
    assert await probe.depth(wire.queue_name(iso.namespace, "flaky")) == 0
    for level in wire.LEVELS:  # nothing went through a park queue
        assert await probe.depth(wire.park_queue_name(iso.namespace, iso.exchange, level)) == 0
