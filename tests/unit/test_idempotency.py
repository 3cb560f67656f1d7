"""Idempotent handlers on the in-memory store and broker: claim, done, release, busy, a failing store."""

from __future__ import annotations

import asyncio
from typing import Any

from event import Idempotency, MemoryStore, Message, Publisher, WorkerPool
from event.idempotency import DONE
from event.testing import TestBroker

URL = "amqp://nobody:nothing@127.0.0.1:1/"  # never dialled: the broker is in memory


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_memory_store_is_bounded_by_count_and_by_time() -> None:
    clock = Clock()
    store = MemoryStore(max_keys=3, clock=clock)
    for n in range(5):
        assert await store.claim(f"k{n}", "t", 10) is None
        await store.done(f"k{n}", 100)
    assert len(store) == 3  # the two oldest went
    assert await store.claim("k0", "t2", 10) is None  # forgotten: claimable again
    assert await store.claim("k4", "t2", 10) == DONE
    clock.now = 101
    assert await store.claim("k4", "t3", 10) is None  # its window passed
    assert await store.claim("k4", "t4", 10) == "t3"  # claimed, not done
    await store.release("k4", "other")  # not the owner: nothing happens
    assert await store.claim("k4", "t5", 10) == "t3"
    await store.release("k4", "t3")
    assert await store.claim("k4", "t6", 10) is None


def setup(dedupe: Idempotency, **options: Any) -> tuple[WorkerPool, Publisher, list[str]]:
    pool = WorkerPool(URL, namespace="t")
    pool.middleware(dedupe.middleware)
    runs: list[str] = []

    @pool.consumer("app.job", **options)
    async def job(ctx: object, msg: Message[Any]) -> None:
        runs.append(msg.body["n"])
        if msg.body.get("fail_first") and msg.attempt == 1:
            raise RuntimeError("first attempt fails")

    return pool, Publisher(URL, namespace="t"), runs


async def test_a_duplicate_is_acked_without_running_and_counted() -> None:
    dedupe = Idempotency(MemoryStore())
    pool, publisher, runs = setup(dedupe)
    async with TestBroker(pool, publisher) as broker:
        for _ in range(3):
            await publisher.publish("app.job", {"n": "a"}, message_id="id-a")
        await publisher.publish("app.job", {"n": "b"})
        await broker.drain()
    assert runs == ["a", "b"]
    assert dedupe.stats.skipped == {"t:job": 2}
    assert broker.dead() == []


async def test_a_failure_releases_the_key_so_the_retry_runs() -> None:
    dedupe = Idempotency(MemoryStore())
    pool, publisher, runs = setup(dedupe)
    async with TestBroker(pool, publisher) as broker:
        await publisher.publish("app.job", {"n": "a", "fail_first": True}, message_id="id-a")
        await broker.drain()
        await broker.advance(10)  # the retry's back-off
        assert runs == ["a", "a"]
        await publisher.publish("app.job", {"n": "a"}, message_id="id-a")  # a late duplicate
        await broker.drain()
    assert runs == ["a", "a"]
    assert dedupe.stats.skipped == {"t:job": 1}


async def test_a_duplicate_of_a_running_message_is_retried_then_skipped() -> None:
    dedupe = Idempotency(MemoryStore(), busy_retry=5)
    pool = WorkerPool(URL, namespace="t")
    gate = asyncio.Event()
    runs: list[str] = []

    @pool.consumer("app.slow", middleware=(dedupe.middleware,))
    async def slow(ctx: object, msg: Message[Any]) -> None:
        runs.append(msg.message_id or "")
        await gate.wait()

    publisher = Publisher(URL, namespace="t")
    async with TestBroker(pool, publisher) as broker:
        await publisher.publish("app.slow", {}, message_id="m")
        await publisher.publish("app.slow", {}, message_id="m")
        for _ in range(50):
            await asyncio.sleep(0.001)
        assert dedupe.stats.busy == {"t:slow": 1}  # the second found the key claimed: a retry
        gate.set()
        await broker.drain()
        await broker.advance(5)
    assert runs == ["m"]
    assert dedupe.stats.skipped == {"t:slow": 1}


async def test_the_key_function_and_the_scope_by_queue() -> None:
    dedupe = Idempotency(MemoryStore(), key=lambda msg: msg.body.get("order"))
    pool = WorkerPool(URL, namespace="t")
    pool.middleware(dedupe.middleware)
    seen: list[tuple[str, Any]] = []

    @pool.consumer("app.order")
    async def bill(ctx: object, msg: Message[Any]) -> None:
        seen.append(("bill", msg.body.get("order")))

    @pool.consumer("app.order")
    async def ship(ctx: object, msg: Message[Any]) -> None:
        seen.append(("ship", msg.body.get("order")))

    publisher = Publisher(URL, namespace="t")
    async with TestBroker(pool, publisher) as broker:
        await publisher.publish("app.order", {"order": 7})  # different message ids, one order
        await publisher.publish("app.order", {"order": 7})
        await publisher.publish("app.order", {})  # no key: unguarded, runs every time
        await publisher.publish("app.order", {})
        await broker.drain()
    assert sorted(seen, key=str) == sorted(
        [("bill", 7), ("ship", 7), ("bill", None), ("bill", None), ("ship", None), ("ship", None)], key=str
    )


class BrokenStore:
    async def claim(self, key: str, token: str, ttl: float) -> str | None:
        raise ConnectionError("store down")

    async def done(self, key: str, ttl: float) -> None:
        raise ConnectionError("store down")

    async def release(self, key: str, token: str) -> None:
        raise ConnectionError("store down")


async def test_a_failing_store_fails_open_by_default_and_closed_on_request() -> None:
    dedupe = Idempotency(BrokenStore())
    pool, publisher, runs = setup(dedupe)
    async with TestBroker(pool, publisher) as broker:
        await publisher.publish("app.job", {"n": "a"}, message_id="x")
        await publisher.publish("app.job", {"n": "a"}, message_id="x")
        await broker.drain()
    assert runs == ["a", "a"]  # unguarded: both ran
    assert dedupe.stats.store_errors == {"t:job": 2}  # each claim; no done for what was not claimed

    closed = Idempotency(BrokenStore(), fail_open=False, busy_retry=5)
    pool, publisher, runs = setup(closed, retries=1)
    async with TestBroker(pool, publisher) as broker:
        await publisher.publish("app.job", {"n": "a"}, message_id="x")
        await broker.drain()
        await broker.advance(5)
        [dead] = broker.dead()
    assert runs == []
    assert "idempotency store failed" in dead.headers["event-error"]
