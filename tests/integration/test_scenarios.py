"""One scenario suite, run against RabbitMQ and against the in-memory TestBroker: they must agree.

Time is real on RabbitMQ and virtual on TestBroker (``wait`` sleeps, or advances the clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support import eventually

from event import Message, Publisher, WorkerPool
from event.dead import DeadQueue
from event.testing import TestBroker


class Harness:
    def __init__(self, kind: str, pool_kwargs: dict[str, Any]) -> None:
        self.kind = kind
        self.kwargs = pool_kwargs
        self.broker: TestBroker | None = None

    @contextlib.asynccontextmanager
    async def run(self, pool: WorkerPool) -> AsyncIterator[Publisher]:
        publisher = Publisher(**self.kwargs)
        if self.kind == "memory":
            async with TestBroker(pool, publisher) as broker:
                self.broker = broker
                yield publisher
        else:
            async with pool.running(), publisher:
                yield publisher

    async def settle(self, check: Callable[[], bool], timeout: float = 20) -> None:
        if self.broker is not None:
            await self.broker.drain()
            assert check()
        else:
            await eventually(check, timeout=timeout)

    async def wait(self, seconds: float) -> None:
        if self.broker is not None:
            await self.broker.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    def now(self) -> float:
        return self.broker.now if self.broker is not None else time.monotonic()

    def dead_queue(self) -> DeadQueue:
        dead = DeadQueue(
            self.kwargs["url"], namespace=self.kwargs["namespace"], exchange=self.kwargs["exchange"]
        )
        if self.broker is not None:
            dead.connector = self.broker.connect
        return dead


@pytest.fixture(params=["rabbitmq", "memory"])
def harness(request: pytest.FixtureRequest, pool_kwargs: dict[str, Any]) -> Harness:
    return Harness(request.param, pool_kwargs)


async def test_topic_routing(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    seen: dict[str, list[str]] = {"star": [], "hash": [], "exact": []}

    @pool.consumer("app.user.*")
    async def star(ctx: object, msg: Message[Any]) -> None:
        seen["star"].append(msg.routing_key)

    @pool.consumer("app.#")
    async def hash_(ctx: object, msg: Message[Any]) -> None:
        seen["hash"].append(msg.routing_key)

    @pool.consumer("app.send_email")
    async def exact(ctx: object, msg: Message[Any]) -> None:
        seen["exact"].append(msg.routing_key)

    async with harness.run(pool) as publisher:
        for key in ("app.user.created", "app.user.deep.key", "app.send_email", "other.thing"):
            await publisher.publish(key, {})
        await harness.settle(lambda: len(seen["hash"]) == 3)
        await harness.wait(0.3)
    assert sorted(seen["star"]) == ["app.user.created"]
    assert sorted(seen["hash"]) == ["app.send_email", "app.user.created", "app.user.deep.key"]
    assert seen["exact"] == ["app.send_email"]


async def test_delayed_message_arrives_at_its_level_not_before(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    arrived: list[float] = []

    @pool.consumer("app.later")
    async def later(ctx: object, msg: Message[Any]) -> None:
        arrived.append(harness.now())

    async with harness.run(pool) as publisher:
        sent = harness.now()
        await publisher.publish_in(3, "app.later", {})
        await harness.wait(4)
        assert arrived == []  # level 5: not at 3 s, not at 4 s
        await harness.wait(2)
        await harness.settle(lambda: len(arrived) == 1)
    assert 5 <= arrived[0] - sent <= 6.5


async def test_retries_then_dead_queue_then_requeue(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    attempts: list[int] = []
    others: list[int] = []
    healthy = False

    @pool.consumer("app.charge", retries=2)
    async def charge(ctx: object, msg: Message[Any]) -> None:
        attempts.append(msg.attempt)
        if not healthy:
            raise RuntimeError("declined")

    @pool.consumer("app.charge")
    async def audit(ctx: object, msg: Message[Any]) -> None:
        others.append(msg.attempt)

    async with harness.run(pool) as publisher:
        await publisher.publish("app.charge", {"amount": 5}, message_id="c-1")
        await harness.settle(lambda: attempts == [1])
        await harness.wait(5.5)
        await harness.settle(lambda: attempts == [1, 2])
        await harness.wait(5.5)
        await harness.settle(lambda: attempts == [1, 2, 3])
        async with harness.dead_queue() as dead:

            async def one_dead() -> bool:
                return await dead.count() == 1

            await eventually(one_dead, timeout=10)
            [message] = await dead.list()
            assert (message.message_id, message.attempts, message.error) == (
                "c-1",
                3,
                "RuntimeError: declined",
            )
            healthy = True
            report = await dead.requeue(everything=True)
            assert report.requeued == ["c-1"]
        await harness.settle(lambda: attempts == [1, 2, 3, 1])
    assert others == [1]


async def test_max_concurrency_is_respected(harness: Harness) -> None:
    pool = WorkerPool(**harness.kwargs)
    running = peak = 0
    done: list[int] = []

    @pool.consumer("app.work", max_concurrency=2)
    async def work(ctx: object, msg: Message[Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        done.append(msg.body["n"])

    async with harness.run(pool) as publisher:
        await asyncio.gather(*(publisher.publish("app.work", {"n": n}) for n in range(12)))
        await harness.settle(lambda: len(done) == 12)
    assert peak == 2
    assert sorted(done) == list(range(12))
