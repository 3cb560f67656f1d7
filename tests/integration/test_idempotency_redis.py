"""Idempotent handlers with the Redis store, on the real broker and the machine's real Redis."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from support import Isolation, eventually

from event import Idempotency, Message, Publisher, RedisStore, WorkerPool

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[Redis, str]]:
    """A Redis client and a key prefix of this test's own; its keys are deleted afterwards."""
    client = Redis.from_url(REDIS_URL)
    prefix = f"event-test:{uuid.uuid4().hex[:10]}:"
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"no Redis answers at {REDIS_URL} ({exc}): start one, or set REDIS_URL", pytrace=False)
    yield client, prefix
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def pool_with(pool_kwargs: dict[str, Any], dedupe: Idempotency | None) -> tuple[WorkerPool, Counter[str]]:
    pool = WorkerPool(**pool_kwargs)
    if dedupe is not None:
        pool.middleware(dedupe.middleware)
    runs: Counter[str] = Counter()

    @pool.consumer("app.pay", prefetch=100)
    async def pay(ctx: object, msg: Message[Any]) -> None:
        runs[msg.body["n"]] += 1
        await asyncio.sleep(0.005)  # long enough for a copy to arrive while the other runs

    return pool, runs


async def publish_twice(publisher: Publisher, count: int) -> None:
    # Each message twice with one message id, the copies side by side: many arrive while the other runs.
    await asyncio.gather(
        *(
            publisher.publish("app.pay", {"n": str(n)}, message_id=f"pay-{n}")
            for n in range(count)
            for _ in range(2)
        )
    )


async def test_1000_messages_published_twice_run_1000_times(
    pool_kwargs: dict[str, Any], iso: Isolation, redis_prefix: tuple[Redis, str]
) -> None:
    client, prefix = redis_prefix
    dedupe = Idempotency(RedisStore(client, prefix=prefix), busy_retry=1)
    pool, runs = pool_with(pool_kwargs, dedupe)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publish_twice(publisher, 1000)
        # Every duplicate is settled: skipped at once (its twin was done) or after a busy retry.
        await eventually(lambda: sum(dedupe.stats.skipped.values()) == 1000, timeout=60)
    assert len(runs) == 1000
    assert set(runs.values()) == {1}, [n for n, c in runs.items() if c != 1][:10]
    assert dedupe.stats.store_errors == {}
    assert await client.get(f"{prefix}{iso.namespace}:pay:pay-7") == b"done"


async def test_without_the_middleware_the_same_stream_runs_2000_times(
    pool_kwargs: dict[str, Any], iso: Isolation
) -> None:
    # The control: the stream above does deliver duplicates, so the test above can fail.
    pool, runs = pool_with(pool_kwargs, None)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publish_twice(publisher, 1000)
        await eventually(lambda: sum(runs.values()) == 2000, timeout=60)
    assert set(runs.values()) == {2}


async def test_redis_down_fails_open_counted(pool_kwargs: dict[str, Any], iso: Isolation) -> None:
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)  # nothing listens there
    dedupe = Idempotency(RedisStore(down), store_timeout=1.0)
    pool, runs = pool_with(pool_kwargs, dedupe)
    try:
        async with pool.running(), Publisher(**pool_kwargs) as publisher:
            await publish_twice(publisher, 5)
            await eventually(lambda: sum(runs.values()) == 10, timeout=30)
    finally:
        await down.aclose()
    assert dedupe.stats.store_errors == {f"{iso.namespace}:pay": 10}
    assert dedupe.stats.skipped == {}


async def test_the_redis_store_claims_once_releases_only_its_own_and_expires(
    redis_prefix: tuple[Redis, str],
) -> None:
    client, prefix = redis_prefix
    store = RedisStore(client, prefix=prefix)
    assert await store.claim("q:k", "mine", 0.3) is None
    assert await store.claim("q:k", "theirs", 0.3) == "mine"  # claimed: the other learns by whom
    await store.release("q:k", "theirs")  # not theirs to release
    assert await client.get(prefix + "q:k") == b"mine"
    await store.release("q:k", "mine")
    assert await store.claim("q:k", "theirs", 0.3) is None  # released: claimable again
    await asyncio.sleep(0.4)
    assert await store.claim("q:k", "third", 30) is None  # an abandoned claim expires by itself
    await store.done("q:k", 0.3)
    assert await store.claim("q:k", "fourth", 30) == "done"
    assert 0 < await client.pttl(prefix + "q:k") <= 300  # kept for the window only
