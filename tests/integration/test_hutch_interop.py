"""Messages shaped exactly as Hutch and hutch-schedule shape them, in both directions (docs/hutch.md)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import hutch_schedule
import pytest
from support import Isolation, Management, Probe, eventually

from event import Message, Publisher, WorkerPool, wire
from event.connect import connect
from event.errors import ConfigurationError
from event.management import ManagementApi
from event.schedule_unbind import unbind_schedule


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
    assert got.routing_key == "app.reminder"  # as it was published, not our park queue's name
    assert got.header.properties.headers["CC"] == ["app.reminder"]
    assert json.loads(got.body) == {"n": 1}


async def test_a_ruby_star_queue_sees_only_what_its_key_routes_to_it(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    star = await hutch_consumer_queue(probe, iso, "words", "*")  # a Ruby consumer of one-word keys
    pool = WorkerPool(**pool_kwargs)
    runs: list[tuple[int, str]] = []

    @pool.consumer("app.flaky", retries=1)
    async def flaky(ctx: object, msg: Message[Any]) -> None:
        runs.append((msg.attempt, msg.delivery_routing_key))
        raise RuntimeError("always")

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.flaky", {"n": "retried"})
        await publisher.publish_in(1, "app.reminder", {"n": "delayed"})
        await publisher.publish_in(1, "tick", {"n": "one word"})
        dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)

        async def settled() -> bool:
            return len(runs) == 2 and await probe.depth(dead_queue) == 1

        await eventually(settled, timeout=20)
        await asyncio.sleep(1)
    assert runs == [(1, "app.flaky"), (2, "app.flaky")]  # the retry keeps its key too
    seen = [(m.routing_key, json.loads(m.body)["n"]) for m in await probe.take_all(star)]
    assert seen == [("tick", "one word")]  # its own key routed it; none of our parked copies did


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


async def bind_other_namespaces(probe: Probe, iso: Isolation, ruby: int, old_event: int) -> list[str]:
    """Namespaces that bind hutch.schedule: ``ruby`` Ruby services, ``old_event`` event pools as before
    issue 30 (their delay queues bound, beside their park queues). Returns a Ruby consumer queue of each
    Ruby namespace, bound to ``app.remind``."""
    channel = await probe.channel()
    ruby_queues = []
    for n in range(ruby):
        namespace = f"{iso.namespace}-ruby{n}"
        iso.extra_queues += await hutch_schedule.declare(channel, namespace, iso.exchange)
        queue = f"{namespace}:remind"
        await channel.queue_declare(queue, durable=True)
        await channel.queue_bind(queue, iso.exchange, routing_key="app.remind")
        iso.extra_queues.append(queue)
        ruby_queues.append(queue)
    for n in range(old_event):
        namespace = f"{iso.namespace}-old{n}"
        iso.extra_queues += await hutch_schedule.declare(channel, namespace, iso.exchange)
        park = wire.park_queue_name(namespace, iso.exchange, 5)
        await channel.queue_declare(park, durable=True, arguments=wire.park_queue_arguments(iso.exchange))
        iso.extra_queues.append(park)
    return ruby_queues


def schedule_bindings(management: Management, iso: Isolation) -> set[str]:
    """The queues bound to hutch.schedule now."""
    path = f"/api/exchanges/%2F/{iso.exchange}.schedule/bindings/source"
    return {b["destination"] for b in management.request("GET", path) or []}


async def copies_in(probe: Probe, queues: list[str]) -> list[int]:
    counts = [len(await probe.take_all(queue)) for queue in queues]
    return counts


def reminder_pool(pool_kwargs: dict[str, Any], namespace: str, got: list[Message[Any]]) -> WorkerPool:
    pool = WorkerPool(**{**pool_kwargs, "namespace": namespace})

    @pool.consumer("app.remind")
    async def remind(ctx: object, msg: Message[Any]) -> None:
        got.append(msg)

    return pool


@pytest.mark.parametrize(
    ("ruby", "old_event"), [(1, 0), (1, 2), (3, 0)], ids=["one Ruby", "one Ruby, two old event", "three Ruby"]
)
async def test_a_ruby_enqueue_in_reaches_ruby_queues_as_before_and_each_event_consumer_once(
    pool_kwargs: dict[str, Any],
    iso: Isolation,
    probe: Probe,
    management: Management,
    ruby: int,
    old_event: int,
) -> None:
    ruby_queues = await bind_other_namespaces(probe, iso, ruby, old_event)
    channel = await probe.channel()
    bound_before = schedule_bindings(management, iso)
    await hutch_schedule.enqueue_in(channel, iso.exchange, 1, b'{"n":0}', "app.remind")
    await hutch_schedule.settle(6.5)
    before = await copies_in(probe, ruby_queues)  # what Ruby saw before any event service of ours
    assert before == [ruby + old_event] * ruby  # each bound namespace makes a copy for each Ruby queue

    ours: list[Message[Any]] = []
    theirs: list[Message[Any]] = []  # a second event service, in a namespace of its own
    pool = reminder_pool(pool_kwargs, iso.namespace, ours)
    other = reminder_pool(pool_kwargs, f"{iso.namespace}:py", theirs)  # its queues are cleaned up as ours
    async with pool.running(), other.running():
        assert schedule_bindings(management, iso) == bound_before  # we bound nothing
        for n in range(1, 4):
            await hutch_schedule.enqueue_in(channel, iso.exchange, 1, b'{"n":%d}' % n, "app.remind")
        await eventually(lambda: len(ours) >= 3 and len(theirs) >= 3, timeout=20)
        await asyncio.sleep(2)  # the other copies die at the same moment: time for them to arrive
    assert sorted(m.body["n"] for m in ours) == [1, 2, 3]
    assert sorted(m.body["n"] for m in theirs) == [1, 2, 3]
    for running in (pool, other):
        duplicates = running.stats.consumers[0].outcomes["duplicate"]
        assert duplicates.get(f"{iso.exchange}.schedule.5s", 0) == 3 * (ruby + old_event - 1)
    assert await copies_in(probe, ruby_queues) == [3 * (ruby + old_event)] * ruby  # as before
    ruby_copy = {m.headers["x-death"][0]["queue"] for m in ours}
    # The copies it ran: a Ruby namespace's, not one that `--unbind-schedule` may be taking away.
    assert all("-ruby" in queue for queue in ruby_copy), ruby_copy


async def test_workers_of_one_queue_run_each_message_once_once_they_know_the_namespaces(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    await bind_other_namespaces(probe, iso, 2, 1)
    channel = await probe.channel()
    got: list[Message[Any]] = []
    first, second = (
        reminder_pool(pool_kwargs, iso.namespace, got),
        reminder_pool(pool_kwargs, iso.namespace, got),
    )
    async with first.running(), second.running():
        await hutch_schedule.enqueue_in(channel, iso.exchange, 1, b'{"n":0}', "app.remind")
        await eventually(lambda: len(got) >= 1, timeout=15)
        await asyncio.sleep(2)
        # While each learns which namespaces bind: at most one run per worker, never none.
        assert 1 <= len(got) <= 2
        got.clear()
        for n in range(1, 6):
            await hutch_schedule.enqueue_in(channel, iso.exchange, 1, b'{"n":%d}' % n, "app.remind")
        await eventually(lambda: len(got) >= 5, timeout=20)
        await asyncio.sleep(2)
    assert sorted(m.body["n"] for m in got) == [1, 2, 3, 4, 5]


async def test_a_pool_that_stands_alone_binds_its_delay_queues_as_hutch_schedule_does(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, management: Management
) -> None:
    got: list[Message[Any]] = []
    pool = WorkerPool(**pool_kwargs, declare_delay_queues=True)

    @pool.consumer("app.remind")
    async def remind(ctx: object, msg: Message[Any]) -> None:
        got.append(msg)

    async with pool.running():
        schedule = management.exchange(f"{iso.exchange}.schedule")
        assert (schedule["type"], schedule["durable"], schedule["arguments"]) == ("topic", True, {})
        delay_queue = wire.delay_queue_name(iso.namespace, iso.exchange, 5)
        assert delay_queue in schedule_bindings(management, iso)
        channel = await probe.channel()
        await hutch_schedule.enqueue_in(channel, iso.exchange, 1, b'{"n":1}', "app.remind")
        await eventually(lambda: len(got) == 1, timeout=15)
    assert got[0].headers["x-death"][0]["queue"] == delay_queue


async def test_a_default_pool_declares_nothing_of_hutch_schedule(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management
) -> None:
    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.remind")
    async def remind(ctx: object, msg: Message[Any]) -> None:
        pass

    async with pool.running(), Publisher(**pool_kwargs):
        ours = [n for n in management.queue_names() if n.startswith(f"{iso.namespace}:")]
        assert not [n for n in ours if wire.is_delay_queue_name(n, iso.exchange)]
        assert not schedule_bindings(management, iso)


async def test_unbind_schedule_moves_a_running_estate_and_loses_nothing_in_flight(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, management: Management
) -> None:
    # Today's estate: this namespace's pool bound its delay queues, beside one Ruby namespace.
    [ruby_queue] = await bind_other_namespaces(probe, iso, 1, 0)
    channel = await probe.channel()
    await hutch_schedule.declare(channel, iso.namespace, iso.exchange)  # what event bound before
    ours = wire.delay_queue_name(iso.namespace, iso.exchange, 10)
    await hutch_schedule.enqueue_in(channel, iso.exchange, 8, b'{"n":"in flight"}', "app.remind")
    assert await probe.depth(ours) == 1
    connection = await connect(pool_kwargs["url"], name="test unbind")
    api = ManagementApi.for_url(pool_kwargs["url"], management.base)
    lines: list[str] = []
    try:
        done = await unbind_schedule(
            connection, api, iso.namespace, iso.exchange, wait=True, report=lines.append
        )
    finally:
        await connection.close()
    assert len(done.unbound) == len(wire.LEVELS) == len(done.deleted)
    assert not [n for n in management.queue_names() if n.startswith(f"{iso.namespace}:")]
    assert all(f"{iso.namespace}-ruby0:" in queue for queue in schedule_bindings(management, iso))
    # The copy that waited in our delay queue went on when due, as it would have: two copies, as before.
    assert len(await probe.take_all(ruby_queue)) == 2
    await hutch_schedule.enqueue_in(channel, iso.exchange, 1, b'{"n":"after"}', "app.remind")
    await hutch_schedule.settle(6.5)
    assert len(await probe.take_all(ruby_queue)) == 1  # the Ruby service's own copy alone


async def test_unbind_schedule_refuses_to_unbind_the_only_namespace_bound(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, management: Management
) -> None:
    channel = await probe.channel()
    await hutch_schedule.declare(channel, iso.namespace, iso.exchange)
    connection = await connect(pool_kwargs["url"], name="test unbind")
    api = ManagementApi.for_url(pool_kwargs["url"], management.base)
    try:
        with pytest.raises(ConfigurationError, match="no other namespace"):
            await unbind_schedule(connection, api, iso.namespace, iso.exchange, wait=True, report=print)
    finally:
        await connection.close()
    assert wire.delay_queue_name(iso.namespace, iso.exchange, 5) in schedule_bindings(management, iso)


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
    # event's run, then Ruby's: our retry copy keeps its routing key through the park queue, so
    # hutch-schedule counts its x-death entry as the failure it was, and Ruby (attempts 2) runs attempts
    # 2 and 3 and stops: 3 runs in all, as if one Ruby consumer had run them (4 before issue 30).
    assert ours == [1]
    assert ruby.runs == [2, 3]
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
