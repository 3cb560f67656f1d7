"""Pool-wide and per-consumer limits hold, and a slow consumer does not hold up another."""

from __future__ import annotations

import asyncio
from typing import Any

from support import eventually

from event import Message, Publisher, WorkerPool


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
