"""Cluster and isolation options: several broker URLs, quorum queues, a pool kept to its namespace."""

from __future__ import annotations

from typing import Any

import pytest
from support import Isolation, Management, Probe, eventually

from event import Message, Publisher, WorkerPool, wire
from event.errors import TopologyMismatch


async def test_several_urls_are_tried_in_turn(pool_kwargs: dict[str, Any]) -> None:
    down = "amqp://guest:guest@127.0.0.1:1/"
    kwargs = {**pool_kwargs, "url": [down, pool_kwargs["url"]]}
    pool = WorkerPool(**kwargs)
    got: list[int] = []

    @pool.consumer("app.a")
    async def a(ctx: object, msg: Message[Any]) -> None:
        got.append(msg.body["n"])

    assert "***" in repr(pool) and "guest:guest" not in repr(pool)
    async with pool.running(), Publisher(**kwargs) as publisher:
        await publisher.publish("app.a", {"n": 1})
        await eventually(lambda: got == [1])


async def test_quorum_queues_for_consumers_and_the_dead_queue(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management, probe: Probe
) -> None:
    # declare_delay_queues: a pool that stands alone declares hutch-schedule's too (classic, as Ruby's).
    pool = WorkerPool(**pool_kwargs, queue_type="quorum", declare_delay_queues=True)
    attempts: list[int] = []

    @pool.consumer("app.q", retries=1)
    async def q(ctx: object, msg: Message[Any]) -> None:
        attempts.append(msg.attempt)
        raise RuntimeError("always")

    @pool.consumer("app.c", queue="classic_one", arguments={"x-queue-type": "classic"})
    async def c(ctx: object, msg: Message[Any]) -> None: ...

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs, queue_type="quorum") as publisher:
        assert management.queue(f"{iso.namespace}:q")["type"] == "quorum"
        assert management.queue(f"{iso.namespace}:classic_one")["type"] == "classic"
        assert management.queue(dead_queue)["type"] == "quorum"
        # event's own delay queues are replicated; hutch-schedule's keep its classic arguments.
        assert management.queue(wire.park_queue_name(iso.namespace, iso.exchange, 5))["type"] == "quorum"
        assert management.queue(wire.delay_queue_name(iso.namespace, iso.exchange, 5))["type"] == "classic"
        await publisher.publish("app.q", {})

        async def dead() -> bool:
            return await probe.depth(dead_queue) == 1

        await eventually(dead, timeout=20)
    assert attempts == [1, 2]  # the retry went through a quorum park queue


async def test_a_publisher_follows_the_pools_queue_type_unless_told_another(
    pool_kwargs: dict[str, Any], iso: Isolation
) -> None:
    async with Publisher(**pool_kwargs, queue_type="quorum"):
        pass
    async with Publisher(**pool_kwargs) as follower:  # given no queue_type: takes the quorum ones
        await follower.publish_in(1, "app.q", {})
    with pytest.raises(TopologyMismatch, match="must be given the same queue_type"):
        async with Publisher(**pool_kwargs, queue_type="classic"):
            pass


async def test_a_pool_consumes_only_from_its_own_namespace(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management, probe: Probe
) -> None:
    # Another application shares the exchange and binds the same routing key in its own namespace.
    other = f"{iso.namespace}x:send_email"
    iso.extra_queues.append(other)
    channel = await probe.channel()
    await channel.exchange_declare(iso.exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(other, durable=True)
    await channel.queue_bind(other, iso.exchange, routing_key="app.send_email")

    name = f"confined-{iso.namespace}"
    pool = WorkerPool(**pool_kwargs, name=name)
    seen: list[str] = []

    @pool.consumer("app.send_email")
    async def send_email(ctx: object, msg: Message[Any]) -> None:
        seen.append(msg.queue)

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.send_email", {})
        await eventually(lambda: seen == [f"{iso.namespace}:send_email"])

        def consumed_queues() -> set[str]:
            ours = {
                c["name"]
                for c in management.connections()
                if (c.get("client_properties") or {}).get("connection_name") == name
            }
            return {
                consumer["queue"]["name"]
                for consumer in management.request("GET", "/api/consumers")
                if (consumer.get("channel_details") or {}).get("connection_name") in ours
                # the worker's own exclusive queue of operators' commands (event.control) aside
                and not consumer["queue"]["name"].startswith("amq.gen-")
            }

        await eventually(lambda: bool(consumed_queues()), timeout=15, interval=0.5)
        assert consumed_queues() == {f"{iso.namespace}:send_email"}
    assert await probe.depth(other) == 1  # the other application's copy is untouched
