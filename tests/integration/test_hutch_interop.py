"""Messages shaped exactly as Hutch and hutch-schedule shape them, in both directions (docs/hutch.md)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import hutch_schedule
import pytest
from support import Isolation, Probe, eventually

from event import Message, Publisher, WorkerPool, wire


async def hutch_consumer_queue(probe: Probe, iso: Isolation, name: str, *keys: str) -> str:
    """What Hutch declares for a Ruby consumer class: a durable queue bound once per routing key."""
    channel = await probe.channel()
    queue = f"{iso.namespace}:{name}"
    await channel.exchange_declare(iso.exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(queue, durable=True)
    for key in keys:
        await channel.queue_bind(queue, iso.exchange, routing_key=key)
    return queue


async def test_python_publishes_what_a_ruby_consumer_reads(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    queue = await hutch_consumer_queue(probe, iso, "send_welcome_email", "app.user.signed_up")
    async with Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.user.signed_up", {"user_id": 42})
    [got] = await probe.take_all(queue)
    props = got.header.properties
    assert json.loads(got.body) == {"user_id": 42}  # a JSON object: a Hash in Ruby
    assert (props.content_type, props.delivery_mode) == ("application/json", 2)
    assert uuid.UUID(props.message_id)
    assert props.timestamp is not None


async def test_a_python_delayed_message_reaches_a_ruby_consumer_after_its_delay(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    queue = await hutch_consumer_queue(probe, iso, "send_reminder", "app.reminder")
    async with Publisher(**pool_kwargs) as publisher:
        sent = time.monotonic()
        await publisher.publish_in(2, "app.reminder", {"n": 1})

    async def arrived() -> bool:
        return await probe.depth(queue) == 1

    await eventually(arrived, timeout=15)
    waited = time.monotonic() - sent
    assert 2 <= waited <= 6.5
    [got] = await probe.take_all(queue)
    assert got.header.properties.headers["CC"] == ["app.reminder"]
    assert json.loads(got.body) == {"n": 1}


async def test_a_hutch_schedule_delayed_message_reaches_a_python_consumer(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    got: list[tuple[float, Message[Any]]] = []

    @pool.consumer("app.send_email")
    async def send_email(ctx: object, msg: Message[Any]) -> None:
        got.append((time.monotonic(), msg))

    async with pool.running():
        channel = await probe.channel()
        await hutch_schedule.declare(channel, iso.namespace, iso.exchange)  # a Ruby service of ours too
        sent = time.monotonic()
        await hutch_schedule.enqueue_in(channel, iso.exchange, 3, b'{"to":"a@b.c"}', "app.send_email")
        await eventually(lambda: len(got) == 1, timeout=15)
        await asyncio.sleep(0.5)
    [(at, msg)] = got
    assert at - sent >= 4.9  # the 5 s level (RabbitMQ's expiry timer runs a few ms either way)
    assert msg.routing_key == "app.send_email"
    assert msg.delivery_routing_key == f"{iso.exchange}.schedule.5s"
    # hutch-schedule counts its own delay in x-death as a failure, and event follows its count: a Ruby
    # delay and a Ruby retry look the same on the wire (docs/hutch.md).
    assert msg.attempt == 2
    assert msg.body == {"to": "a@b.c"}


@pytest.mark.parametrize("other_namespaces", [0, 2], ids=["only ours bound", "three namespaces bound"])
async def test_one_enqueue_in_reaches_our_consumer_once_however_many_namespaces_bind(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, other_namespaces: int
) -> None:
    pool = WorkerPool(**pool_kwargs)
    got: list[Message[Any]] = []

    @pool.consumer("app.remind")
    async def remind(ctx: object, msg: Message[Any]) -> None:
        got.append(msg)

    channel = await probe.channel()
    for n in range(other_namespaces):  # Ruby services of other namespaces, each binding its delay queues
        iso.extra_queues += await hutch_schedule.declare(channel, f"{iso.namespace}-ruby{n}", iso.exchange)
    async with pool.running():
        await hutch_schedule.enqueue_in(channel, iso.exchange, 1, b'{"n":1}', "app.remind")
        await eventually(lambda: len(got) >= 1, timeout=15)
        await asyncio.sleep(2)  # the other copies die at the same moment: time for them to arrive
    assert len(got) == 1
    duplicates = pool.stats.consumers[0].outcomes["duplicate"]
    assert duplicates.get(f"{iso.exchange}.schedule.5s", 0) == other_namespaces


async def test_a_catch_all_queue_sees_events_once_and_none_of_our_retries(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    everything = await hutch_consumer_queue(probe, iso, "audit", "#")  # a Ruby auditor bound to '#'
    pool = WorkerPool(**pool_kwargs)
    runs: list[int] = []

    @pool.consumer("app.flaky", retries=2)
    async def flaky(ctx: object, msg: Message[Any]) -> None:
        runs.append(msg.attempt)
        raise RuntimeError("always")

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.flaky", {"n": "now"})
        await publisher.publish_in(2, "app.other", {"n": "later"})
        await eventually(lambda: runs == [1, 2, 3], timeout=30)
        await asyncio.sleep(1)
    seen = [json.loads(m.body)["n"] for m in await probe.take_all(everything)]
    assert sorted(seen) == ["later", "now"]  # each event once; not one of the two retry copies


async def test_a_message_handed_from_event_to_a_ruby_consumer_stops(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    # docs/hutch.md's move, rolled back: event fails the message once, then only the Ruby consumer of
    # the same queue (attempts 2) gets it. It used to be retried by Ruby for ever.
    if (await probe.broker_version())[:1] >= (4,):
        pytest.skip(
            "RabbitMQ 4.x ignores the x-death a client republishes, so hutch-schedule's MaxRetry never "
            "counts past 1 and retries for ever by itself, with or without event (docs/hutch.md)"
        )
    pool = WorkerPool(**pool_kwargs)
    ours: list[int] = []

    @pool.consumer("app.charge", queue="charge", retries=3)
    async def charge(ctx: object, msg: Message[Any]) -> None:
        ours.append(msg.attempt)
        raise RuntimeError("card declined")

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.charge", {"n": 1})
        await eventually(lambda: ours == [1], timeout=10)
    # The retry copy waits 5 s in our park queue; meanwhile Ruby takes the queue over.
    channel = await probe.new_channel()
    await hutch_schedule.declare(channel, iso.namespace, iso.exchange)
    ruby = hutch_schedule.RubyConsumer(channel, iso.exchange, f"{iso.namespace}:charge", ("app.charge",), 2)
    await ruby.start()
    await eventually(lambda: len(ruby.gave_up) == 1, timeout=40)
    await asyncio.sleep(7)  # longer than any retry delay left: nothing runs again
    await ruby.stop()
    # event's run, then Ruby's three (attempts 2 = the first run and two retries): 4 runs in all.
    assert ours == [1]
    assert ruby.runs == [1, 2, 3]
    assert await probe.depth(f"{iso.namespace}:charge") == 0


async def test_event_and_a_ruby_consumer_on_one_queue_stop_within_both_limits(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    # Both consume at once (docs/hutch.md's step 2). event allows 3 retries (4 runs), Ruby 2 (3 runs):
    # at most 7 runs, and the message ends in event's dead queue or in Ruby's "failing" log line.
    channel = await probe.new_channel()
    await hutch_schedule.declare(channel, iso.namespace, iso.exchange)
    pool = WorkerPool(**pool_kwargs)
    ours: list[int] = []

    @pool.consumer("app.charge", queue="charge", retries=3, prefetch=1)
    async def charge(ctx: object, msg: Message[Any]) -> None:
        ours.append(msg.attempt)
        raise RuntimeError("card declined")

    ruby = hutch_schedule.RubyConsumer(channel, iso.exchange, f"{iso.namespace}:charge", ("app.charge",), 2)
    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await ruby.start()
        await publisher.publish("app.charge", {"n": 1})

        async def ended() -> bool:
            return bool(ruby.gave_up) or await probe.depth(dead_queue) == 1

        await eventually(ended, timeout=90)
        await asyncio.sleep(7)
    await ruby.stop()
    assert len(ours) + len(ruby.runs) <= 7, (ours, ruby.runs)
    assert len(ruby.gave_up) + await probe.depth(dead_queue) == 1
    assert ours == sorted(ours)  # event's count never goes back


async def test_python_and_ruby_consumers_share_a_queue_during_a_move(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    # The Ruby consumer's queue exists with its messages; the Python consumer of the same name takes over.
    queue = await hutch_consumer_queue(probe, iso, "send_welcome_email", "app.user.signed_up")
    async with Publisher(**pool_kwargs) as publisher:
        for n in range(20):
            await publisher.publish("app.user.signed_up", {"n": n})
    pool = WorkerPool(**pool_kwargs)
    handled: list[int] = []

    @pool.consumer("app.user.signed_up")
    async def send_welcome_email(ctx: object, msg: Message[Any]) -> None:
        handled.append(msg.body["n"])

    async with pool.running():
        await eventually(lambda: len(handled) == 20)
    assert sorted(handled) == list(range(20))
    assert await probe.depth(queue) == 0
