"""Pool-wide and per-consumer limits hold, and a slow consumer does not hold up another."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support import eventually

from event import Dead, Message, Publisher, WorkerPool


class Gauge:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def hold(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


async def test_max_concurrency_caps_one_consumer_while_another_flows(pool_kwargs: dict[str, Any]) -> None:
    pool = WorkerPool(**pool_kwargs, concurrency=0)
    slow_gauge = Gauge()
    fast_done: list[int] = []
    slow_done: list[int] = []

    @pool.consumer("app.slow", max_concurrency=2, prefetch=50)
    async def slow(ctx: object, msg: Message[Any]) -> None:
        await slow_gauge.hold(0.25)
        slow_done.append(msg.body["n"])

    @pool.consumer("app.fast", prefetch=50)
    async def fast(ctx: object, msg: Message[Any]) -> None:
        fast_done.append(msg.body["n"])

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await asyncio.gather(*(publisher.publish("app.slow", {"n": n}) for n in range(20)))
        await asyncio.gather(*(publisher.publish("app.fast", {"n": n}) for n in range(200)))
        # 20 slow messages, 2 at a time, take 2.5 s at least; the fast ones must not wait for them
        await eventually(lambda: len(fast_done) == 200, timeout=10)
        assert len(slow_done) < 20
        await eventually(lambda: len(slow_done) == 20, timeout=10)
    assert slow_gauge.peak == 2


async def test_pool_concurrency_caps_all_consumers_together(pool_kwargs: dict[str, Any]) -> None:
    pool = WorkerPool(**pool_kwargs, concurrency=3)
    gauge = Gauge()
    done: list[int] = []

    async def handler(ctx: object, msg: Message[Any]) -> None:
        await gauge.hold(0.05)
        done.append(msg.body["n"])

    for key in ("app.a", "app.b", "app.c"):
        pool.consumer(key, queue=key.replace(".", "_"))(handler)

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await asyncio.gather(
            *(publisher.publish(key, {"n": n}) for key in ("app.a", "app.b", "app.c") for n in range(10))
        )
        await eventually(lambda: len(done) == 30, timeout=20)
    assert gauge.peak == 3


@pytest.mark.parametrize("outcome", ["ack", "dead"])
async def test_one_slow_message_does_not_hold_up_the_finished_ones_behind_it(
    pool_kwargs: dict[str, Any], outcome: str
) -> None:
    """Prefetch 10, one message that runs until the end of the test, 199 quick ones behind it: the
    quick ones' acks (or, for ``dead``, the acks after their dead copies are confirmed) must reach the
    broker although a tag before them is unfinished, or the prefetch fills and the consumer stops."""
    pool = WorkerPool(**pool_kwargs, concurrency=0)
    release = asyncio.Event()
    started = asyncio.Event()
    quick: list[float] = []

    @pool.consumer("app.mixed", max_concurrency=10, prefetch=10, retries=0)
    async def mixed(ctx: object, msg: Message[Any]) -> None:
        if msg.body["n"] == 0:
            started.set()
            await release.wait()
            return
        quick.append(time.monotonic())
        if outcome == "dead":
            raise Dead("quick and dead")

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        try:
            await publisher.publish("app.mixed", {"n": 0})
            await asyncio.wait_for(started.wait(), timeout=10)
            began = time.monotonic()
            await asyncio.gather(*(publisher.publish("app.mixed", {"n": n}) for n in range(1, 200)))
            await eventually(lambda: len(quick) == 199, timeout=15)
            within_5s = sum(1 for t in quick if t - began <= 5)
            per_second = [sum(1 for t in quick if s <= t - began < s + 1) for s in range(5)]
            assert within_5s >= 190, f"{within_5s} of 199 in 5 s behind one slow message: {per_second}/s"
        finally:
            release.set()
