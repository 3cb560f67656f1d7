"""Priorities without a broker: the publish property, the consumer queue argument, TestBroker's order."""

from __future__ import annotations

from typing import Any

import pytest

from event import ConfigurationError, Message, Publisher, WorkerPool
from event.testing import TestBroker

URL = "amqp://nobody:nothing@127.0.0.1:1/"  # never dialled: the broker is in memory


def test_max_priority_declares_x_max_priority_on_classic_queues_only() -> None:
    pool = WorkerPool(URL, namespace="t")

    @pool.consumer("app.a", max_priority=9)
    async def a(ctx: object, msg: object) -> None: ...

    @pool.consumer("app.b", max_priority=9, arguments={"x-queue-type": "quorum"})
    async def b(ctx: object, msg: object) -> None: ...

    @pool.consumer("app.c")
    async def c(ctx: object, msg: object) -> None: ...

    queues = {q.name: q.arguments for q in pool.topology().queues}
    assert queues["t:a"]["x-max-priority"] == 9
    assert "x-max-priority" not in queues["t:b"]  # RabbitMQ refuses it on a quorum queue
    assert "x-max-priority" not in queues["t:c"]
    quorum = WorkerPool(URL, namespace="q", queue_type="quorum")
    quorum.consumer("app.a", max_priority=5)(a)
    assert "x-max-priority" not in {q.name: q.arguments for q in quorum.topology().queues}["q:a"]


def test_bad_priorities_fail_early() -> None:
    pool = WorkerPool(URL, namespace="t")
    with pytest.raises(ConfigurationError, match="max_priority"):
        pool.consumer("app.a", max_priority=256)(lambda ctx, msg: None)
    with pytest.raises(ConfigurationError, match="give one of them"):
        pool.consumer("app.a", max_priority=5, arguments={"x-max-priority": 9})(lambda ctx, msg: None)


async def test_publish_rejects_a_priority_outside_0_255() -> None:
    publisher = Publisher(URL, namespace="t")
    async with TestBroker(publisher):
        for bad in (-1, 256, True, 2.0):
            with pytest.raises(ValueError, match="priority"):
                await publisher.publish("app.a", {}, priority=bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="priority"):
                await publisher.publish_in(30, "app.a", {}, priority=bad)  # type: ignore[arg-type]


async def test_test_broker_delivers_higher_priorities_first_and_copies_keep_theirs() -> None:
    pool = WorkerPool(URL, namespace="t")
    order: list[int] = []

    @pool.consumer("app.job", max_priority=9, max_concurrency=1, retries=1)
    async def job(ctx: object, msg: Message[Any]) -> None:
        order.append(msg.body["n"])
        if msg.body.get("fail"):
            raise RuntimeError("fails every time")

    publisher = Publisher(URL, namespace="t")
    await pool.pause("t:job")  # a stopped consumer: the messages wait in its queue
    async with TestBroker(pool, publisher) as broker:
        for n in range(1000):
            await publisher.publish("app.job", {"n": n})
        for n in range(1000, 1010):
            await publisher.publish("app.job", {"n": n}, priority=9)
        await publisher.publish("app.job", {"n": 2000, "fail": True}, priority=12)  # capped at 9
        await publisher.publish_in(30, "app.job", {"n": 3000}, priority=7)
        await pool.resume("t:job")
        await broker.drain()
        assert order[:11] == [*range(1000, 1010), 2000]
        assert order[11:] == list(range(1000))
        await broker.advance(30)  # the retry of 2000 (20 s) and the delayed 3000 (30 s)
        assert order[-2:] == [2000, 3000]
        [dead] = broker.queues["t:hutch_dead_queue"].messages
    assert dead.props.priority == 12  # the dead copy keeps the priority it was published with
