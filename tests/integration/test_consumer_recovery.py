"""A consumer the broker cancels, or whose channel it closes, comes back; one that cannot says why.

Every test runs a real pool against the real broker and counts every message. A queue deleted under a
consumer takes its messages with it (that is the broker's doing, not a loss of ours), so the messages
of these tests are each either handled before the deletion, or published after it with
``mandatory=True`` and published again while the broker returns them: the caller's part of
at-least-once, since a returned message raises instead of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import pytest
from support import Isolation, Management, eventually

from event import Message, Publisher, Unroutable, WorkerPool, wire

N_PER_PHASE = 200  # published before, during and after the outage: 600 for the consumer under test


async def publish_until_routed(publisher: Publisher, routing_key: str, n: int) -> int:
    """Publish ``{"n": n}`` until a queue takes it; returns how often the broker returned it."""
    returned = 0
    while True:
        try:
            await publisher.publish(routing_key, {"n": n}, mandatory=True)
            return returned
        except Unroutable:
            returned += 1
            await asyncio.sleep(0.02)


def errors_about(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and all(w in r.getMessage() for w in words)
    ]


async def test_a_consumer_whose_queue_is_deleted_comes_back_while_the_other_keeps_flowing(
    pool_kwargs: dict[str, Any],
    iso: Isolation,
    management: Management,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="event")
    pool = WorkerPool(**pool_kwargs)
    handled: Counter[int] = Counter()
    other: list[tuple[int, bool]] = []

    @pool.consumer("app.work", prefetch=50)
    async def work(ctx: object, msg: Message[Any]) -> None:
        await asyncio.sleep(0.001)
        handled[msg.body["n"]] += 1

    @pool.consumer("app.other")
    async def other_work(ctx: object, msg: Message[Any]) -> None:
        other.append((msg.body["n"], msg.redelivered))

    queue = pool.consumers[0].queue
    returned = 0
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        stop_other = asyncio.Event()

        async def keep_the_other_busy() -> int:
            sent = 0
            while not stop_other.is_set():
                await publisher.publish("app.other", {"n": sent}, mandatory=True)
                sent += 1
                await asyncio.sleep(0.01)
            return sent

        other_feed = asyncio.create_task(keep_the_other_busy())
        for n in range(N_PER_PHASE):  # before
            returned += await publish_until_routed(publisher, "app.work", n)
        await eventually(lambda: len(handled) == N_PER_PHASE, timeout=30)

        deleted_at = time.monotonic()
        await asyncio.to_thread(management.delete_queue, queue)
        during = asyncio.gather(
            *(publish_until_routed(publisher, "app.work", n) for n in range(N_PER_PHASE, 2 * N_PER_PHASE))
        )
        await eventually(lambda: not pool.ready, timeout=2, interval=0.01)
        not_ready_after = time.monotonic() - deleted_at
        await eventually(lambda: pool.ready, timeout=10, interval=0.01)
        back_after = time.monotonic() - deleted_at
        returned += sum(await during)
        for n in range(2 * N_PER_PHASE, 3 * N_PER_PHASE):  # after
            returned += await publish_until_routed(publisher, "app.work", n)
        await eventually(lambda: len(handled) == 3 * N_PER_PHASE, timeout=30)
        stop_other.set()
        sent_other = await other_feed
        await eventually(lambda: len(other) >= sent_other, timeout=10)

    duplicates = sum(count - 1 for count in handled.values())
    print(
        f"\nqueue deleted: not ready after {not_ready_after:.3f} s, consuming again after "
        f"{back_after:.3f} s; {3 * N_PER_PHASE} handled, {duplicates} duplicates, "
        f"{returned} returns re-published; other consumer: {len(other)} handled"
    )
    assert set(handled) == set(range(3 * N_PER_PHASE))  # none lost
    assert sorted(n for n, _ in other) == list(range(sent_other))
    assert not any(redelivered for _, redelivered in other)  # its channel and work were untouched
    restarts = {s.queue: s.restarts for s in pool.stats.consumers}
    assert restarts == {queue: 1, pool.consumers[1].queue: 0}
    stopped = errors_about(caplog, repr(queue), "stopped")
    assert len(stopped) == 1, stopped  # one line, naming the queue and the broker's reason
    assert "Basic.Cancel" in stopped[0]


async def test_a_consumer_whose_queue_was_redeclared_with_other_arguments_stays_not_ready_and_says_why(
    pool_kwargs: dict[str, Any],
    iso: Isolation,
    management: Management,
    probe: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.work")
    async def work(ctx: object, msg: Message[Any]) -> None:
        pass

    @pool.consumer("app.other")
    async def other_work(ctx: object, msg: Message[Any]) -> None:
        pass

    queue = pool.consumers[0].queue
    async with pool.running():
        channel = await probe.channel()
        for _ in range(5):  # the pool may declare its own first: then take the queue from it again
            await channel.queue_delete(queue)
            await channel.queue_declare(queue, durable=True, arguments={"x-max-length": 7})
            arguments = (await asyncio.to_thread(management.queue, queue))["arguments"]
            if arguments.get("x-max-length") == 7:  # 4.x adds x-queue-type among them
                break
            await eventually(lambda: pool.ready, timeout=10)
        await eventually(lambda: not pool.ready, timeout=2, interval=0.01)
        await asyncio.sleep(3)
        assert not pool.ready
        refusals = errors_about(caplog, repr(queue), "cannot consume again")
        assert len(refusals) >= 2, refusals  # on every attempt, not once
        print(f"\n{len(refusals)} refusals in 3 s, the last: {refusals[-1]}")
        assert "inequivalent arg 'x-max-length'" in refusals[-1]
        assert {s.queue: s.consuming for s in pool.stats.consumers} == {
            queue: False,
            pool.consumers[1].queue: True,
        }
        await channel.queue_delete(queue)  # the operator's way out
        await eventually(lambda: pool.ready, timeout=15)


async def test_the_copy_channel_closed_by_the_broker_comes_back_and_the_retry_is_stored(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management
) -> None:
    pool = WorkerPool(**pool_kwargs)
    attempts: list[int] = []

    @pool.consumer("app.flaky")
    async def flaky(ctx: object, msg: Message[Any]) -> None:
        attempts.append(msg.attempt)
        if msg.attempt == 1:
            raise RuntimeError("the first attempt fails")

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        # A retry copy goes through the park entry exchange: publishing to it once it is gone makes the
        # broker close the copy channel with NOT_FOUND.
        await asyncio.to_thread(management.delete_exchange, wire.park_entry_exchange_name(iso.exchange))
        await publisher.publish("app.flaky", {"n": 1})
        await eventually(lambda: 2 in attempts, timeout=30)
        await eventually(lambda: pool.ready, timeout=10)
    assert pool.stats.publish_channel_reopens >= 1
    assert attempts.count(2) == 1


class ReadinessAtCancel(logging.Handler):
    """Notes ``pool.ready`` as the pool logs that the broker cancelled a consumer.

    The pool logs it once readiness has dropped and before it consumes again, which on a fast broker
    follows within milliseconds: polling ``pool.ready`` can miss that window, this cannot."""

    def __init__(self, pool: WorkerPool) -> None:
        super().__init__(logging.INFO)
        self.pool = pool
        self.seen: list[tuple[float, bool]] = []  # (when, pool.ready then)

    def emit(self, record: logging.LogRecord) -> None:
        if "the broker cancelled consumer" in record.getMessage():
            self.seen.append((record.created, self.pool.ready))


def broker_version(management: Management) -> tuple[int, ...]:
    overview = management.request("GET", "/api/overview")
    return tuple(int(part) for part in str(overview["rabbitmq_version"]).split(".")[:2])


async def test_a_consumer_the_broker_cancels_for_a_delivery_timeout_comes_back(
    pool_kwargs: dict[str, Any],
    iso: Isolation,
    management: Management,
    caplog: pytest.LogCaptureFixture,
) -> None:
    version = await asyncio.to_thread(broker_version, management)
    if version < (4, 3):
        pytest.skip(
            f"RabbitMQ {'.'.join(map(str, version))} does not cancel a quorum queue's consumer when a "
            "delivery outlives x-consumer-timeout (4.3 sends basic.cancel); run this against 4.3 with "
            "AMQP_URL=amqp://guest:guest@127.0.0.1:5673/ RABBITMQ_MANAGEMENT_URL=http://127.0.0.1:15673"
        )
    caplog.set_level(logging.INFO)
    pool = WorkerPool(**pool_kwargs, grace=10)
    handled: Counter[int] = Counter()
    held = asyncio.Event()

    @pool.consumer("app.work", prefetch=50, arguments={"x-queue-type": "quorum", "x-consumer-timeout": 2000})
    async def work(ctx: object, msg: Message[Any]) -> None:
        if msg.body["n"] == 0 and not held.is_set():
            held.set()
            await asyncio.sleep(4)  # outlives the 2 s delivery timeout: the broker cancels the consumer
        handled[msg.body["n"]] += 1

    queue = pool.consumers[0].queue
    readiness = ReadinessAtCancel(pool)
    logging.getLogger("event.supervise").addHandler(readiness)
    try:
        async with pool.running(), Publisher(**pool_kwargs) as publisher:
            for n in range(N_PER_PHASE):  # before
                await publisher.publish("app.work", {"n": n}, mandatory=True)
            await eventually(lambda: bool(readiness.seen), timeout=30, interval=0.01)
            not_ready_at, ready_then = readiness.seen[0]
            assert not ready_then, "the pool said ready while its consumer was cancelled"
            for n in range(N_PER_PHASE, 2 * N_PER_PHASE):  # during
                await publisher.publish("app.work", {"n": n}, mandatory=True)
            await eventually(lambda: pool.ready, timeout=10, interval=0.01)
            back_at = time.time()
            for n in range(2 * N_PER_PHASE, 3 * N_PER_PHASE):  # after
                await publisher.publish("app.work", {"n": n}, mandatory=True)
            await eventually(lambda: len(handled) == 3 * N_PER_PHASE, timeout=30)
            await eventually(lambda: pool.in_flight == 0, timeout=10)
    finally:
        logging.getLogger("event.supervise").removeHandler(readiness)

    cancelled_at = min(r.created for r in caplog.records if "the broker cancelled consumer" in r.getMessage())
    duplicates = sum(count - 1 for count in handled.values())
    print(
        f"\nRabbitMQ {version}: consumer cancelled for a delivery timeout; not ready "
        f"{not_ready_at - cancelled_at:.3f} s after the cancel, consuming again after "
        f"{back_at - cancelled_at:.3f} s; {3 * N_PER_PHASE} handled, {duplicates} duplicates"
    )
    assert set(handled) == set(range(3 * N_PER_PHASE))  # none lost
    assert not_ready_at - cancelled_at < 2
    assert back_at - cancelled_at < 10
    assert {s.queue: s.restarts for s in pool.stats.consumers} == {queue: 1}
