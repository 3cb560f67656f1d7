"""Batch consumers: lists of up to ``batch`` messages, one multiple-ack per list, failures per message."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest
from support import Isolation, Probe, eventually

from event import BatchFailed, ConfigurationError, Message, Publisher, WorkerPool, wire


@dataclass
class Row:
    n: int


async def test_a_batch_consumer_gets_lists_of_typed_messages_each_handled_once(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    calls: list[list[int]] = []

    @pool.consumer("app.rows", batch=100, batch_wait=0.2)
    async def rows(ctx: object, msgs: list[Message[Row]]) -> None:
        assert all(isinstance(m.body, Row) for m in msgs)
        calls.append([m.body.n for m in msgs])

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await asyncio.gather(*(publisher.publish("app.rows", {"n": n}) for n in range(1000)))
        await eventually(lambda: sum(map(len, calls)) >= 1000, timeout=20)
        await asyncio.sleep(0.3)
    assert sorted(n for call in calls for n in call) == list(range(1000))  # each once
    assert all(1 <= len(call) <= 100 for call in calls)
    assert len(calls) < 100  # they were gathered, not one by one
    assert await probe.depth(wire.queue_name(iso.namespace, "rows")) == 0  # all acked


async def test_a_partial_batch_goes_after_batch_wait(pool_kwargs: dict[str, Any]) -> None:
    pool = WorkerPool(**pool_kwargs)
    calls: list[tuple[float, int]] = []

    @pool.consumer("app.few", batch=100, batch_wait=0.3)
    async def few(ctx: object, msgs: list[Message[Any]]) -> None:
        calls.append((time.monotonic(), len(msgs)))

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        sent = time.monotonic()
        await asyncio.gather(*(publisher.publish("app.few", {"n": n}) for n in range(3)))
        await eventually(lambda: sum(n for _, n in calls) == 3, timeout=10)
    assert calls[0][0] - sent >= 0.25  # waited for more
    assert calls[0][0] - sent < 3


@pytest.mark.parametrize("raise_", ["error", "batch_failed"])
async def test_a_failing_batch_fails_each_message_or_only_those_named(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, raise_: str
) -> None:
    pool = WorkerPool(**pool_kwargs)
    seen: list[int] = []

    @pool.consumer("app.bad", batch=10, batch_wait=0.2, retries=0)
    async def bad(ctx: object, msgs: list[Message[Any]]) -> None:
        seen.extend(m.body["n"] for m in msgs)
        if raise_ == "error":
            raise ValueError("the database said no")
        raise BatchFailed([m for m in msgs if m.body["n"] == 3], error=ValueError("row 3 is bad"))

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    expected_dead = 10 if raise_ == "error" else 1
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await asyncio.gather(*(publisher.publish("app.bad", {"n": n}) for n in range(10)))

        async def settled() -> bool:
            return await probe.depth(dead_queue) == expected_dead

        await eventually(settled, timeout=15)
        await asyncio.sleep(0.3)
    assert sorted(seen) == list(range(10))  # no message lost, none run twice
    dead = await probe.take_all(dead_queue)
    errors = {m.header.properties.headers["event-error"] for m in dead}
    named = "the database said no" if raise_ == "error" else "row 3 is bad"
    assert all(named in (e.decode() if isinstance(e, bytes) else e) for e in errors), errors
    if raise_ == "batch_failed":
        import orjson

        assert [orjson.loads(m.body)["n"] for m in dead] == [3]
    assert await probe.depth(wire.queue_name(iso.namespace, "bad")) == 0


def test_a_batch_larger_than_its_prefetch_is_refused_with_the_fix(pool_kwargs: dict[str, Any]) -> None:
    pool = WorkerPool(**pool_kwargs)
    with pytest.raises(
        ConfigurationError, match=r"prefetch of consumer .* \(50\) is below its batch \(100\)"
    ):

        @pool.consumer("app.x", batch=100, prefetch=50)
        async def x(ctx: object, msgs: list[Message[Any]]) -> None: ...

    @pool.consumer("app.y", batch=100)
    async def y(ctx: object, msgs: list[Message[Any]]) -> None: ...

    assert pool.consumers[0].prefetch == 200  # two batches by default
