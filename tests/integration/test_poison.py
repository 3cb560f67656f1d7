"""A message whose handler kills the worker ends in the dead queue after ``max_deliveries``; the stream
around it loses nothing. Counted, on classic and quorum queues (run the file against RabbitMQ 4.3 too).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiormq import spec
from support import Isolation, Management, Probe, eventually

from event import Publisher, WorkerPool, wire

APPS = Path(__file__).parent / "apps"
STREAM = 500
MAX_DELIVERIES = 3


async def start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    argv = [sys.executable, "-m", "event.cli", "--log-level", "warning", "worker", "poison_app:pool"]
    with Path(env["EVENT_TEST_JOURNAL"] + ".log").open("ab") as log:  # noqa: ASYNC230 - a local file, once
        return await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)


def read_journal(path: Path) -> list[tuple[str, bool]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [(p[0], p[1] == "1") for p in (line.split() for line in lines) if len(p) == 3]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_message_that_kills_its_worker_is_dead_queued_after_max_deliveries(
    queue_type: str, pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    env = {
        **os.environ,
        "AMQP_URL": pool_kwargs["url"],
        "EVENT_TEST_NAMESPACE": iso.namespace,
        "EVENT_TEST_EXCHANGE": iso.exchange,
        "EVENT_TEST_JOURNAL": str(journal),
        "EVENT_TEST_QUEUE_TYPE": queue_type,
        "EVENT_TEST_MAX_DELIVERIES": str(MAX_DELIVERIES),
        "PYTHONPATH": str(APPS),
    }
    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    queue = f"{iso.namespace}:job"
    worker = await start_worker(env)
    restarts = 0

    async def consuming() -> bool:
        try:
            ok = await (await probe.channel()).queue_declare(queue, passive=True)
        except Exception:
            return False
        return bool(ok.consumer_count == 1)

    await eventually(consuming, timeout=30)
    async with Publisher(**pool_kwargs) as publisher:
        for n in range(STREAM):
            if n == STREAM // 2:
                await publisher.publish("poison.job", {"poison": True, "id": -1}, message_id="poison")
            await publisher.publish("poison.job", {"id": n}, message_id=f"m-{n}")

    async def settled() -> bool:
        nonlocal worker, restarts
        if worker.returncode is not None:  # killed by the poison: start another, as a supervisor would
            restarts += 1
            worker = await start_worker(env)
        handled = {name for name, _ in read_journal(journal) if name != "poison"}
        dead = await probe.depth(dead_queue)
        return dead >= 1 and len(handled) + dead >= STREAM + 1

    try:
        await eventually(settled, timeout=60, interval=0.2)
        await asyncio.sleep(1)  # a late redelivery of the poison would show up now
    finally:
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()
    handlings = read_journal(journal)
    counts = Counter(name for name, _ in handlings)
    duplicates = {name for name, count in counts.items() if count > 1 and name != "poison"}
    unflagged = {name for name in duplicates if not any(again for n, again in handlings if n == name)}
    deads = await probe.take_all(dead_queue)
    print(
        f"\n{queue_type}: sent {STREAM}+1, handled {len(counts) - 1}, duplicates {len(duplicates)}, "
        f"lost {STREAM - (len(counts) - 1)}, dead {len(deads)}, poison runs {counts['poison']}, "
        f"worker restarts {restarts}"
    )
    [dead] = deads  # the poison alone
    headers = dead.header.properties.headers
    assert counts["poison"] == MAX_DELIVERIES  # it ran exactly that often, then never again
    assert restarts == MAX_DELIVERIES
    assert len(counts) - 1 == STREAM  # every other message handled: none lost, none dead-queued
    assert not unflagged  # a message handled twice says so (Message.redelivered) the second time
    assert dead.header.properties.message_id == "poison"
    assert orjson.loads(dead.body) == {"poison": True, "id": -1}
    assert headers[wire.H_DELIVERIES] == MAX_DELIVERIES
    assert headers[wire.H_QUEUE] == queue
    assert headers[wire.H_ROUTING_KEY] == "poison.job"
    error = headers[wire.H_ERROR]
    error = error.decode() if isinstance(error, bytes) else error
    assert error.startswith("WorkerDied: delivered 3 time(s)") and "worker likely died" in error
    assert await probe.depth(queue) == 0


async def test_quorum_consumer_queues_dead_letter_at_the_brokers_own_limit(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, management: Management
) -> None:
    pool = WorkerPool(**pool_kwargs, queue_type="quorum")

    @pool.consumer("app.work", max_deliveries=2)
    async def work(ctx: object, msg: Any) -> None:
        pass

    async with pool.running():
        pass  # declares the topology
    queue, dead_queue = f"{iso.namespace}:work", wire.dead_queue_name(iso.namespace, iso.exchange)
    arguments = management.queue(queue)["arguments"]
    assert arguments["x-delivery-limit"] == wire.broker_delivery_limit(2) > 2
    assert arguments["x-dead-letter-exchange"] == ""
    assert arguments["x-dead-letter-routing-key"] == dead_queue
    # A consumer that is not ours rejects the message over and over: the broker gives up on it at its
    # limit, and moves it to our dead queue instead of dropping it.
    await probe.publish("", queue, b"{}", delivery_mode=2, message_id="looping")
    channel = await probe.channel()
    for _ in range(wire.broker_delivery_limit(2) + 1):
        got = await channel.basic_get(queue, no_ack=False)
        if isinstance(got.delivery, spec.Basic.GetEmpty):
            break
        await channel.basic_reject(got.delivery.delivery_tag, requeue=True)

    async def arrived() -> bool:
        return await probe.depth(dead_queue) == 1

    await eventually(arrived, timeout=10)
    [dead] = await probe.take_all(dead_queue)
    assert dead.header.properties.message_id == "looping"
    assert dead.header.properties.headers["x-death"][0]["reason"] in (b"delivery_limit", "delivery_limit")


async def test_a_poison_messages_dead_copy_counts_its_failures_on_the_pools_own_exchange(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    # A message retried once by this pool (its death in this exchange's park queue, event-retries 1),
    # then delivered MAX_DELIVERIES times without settling: its dead copy counts the one failure. The
    # pool's exchange is not Hutch's default: the park queue's death must be known as ours by this
    # exchange's name, else it is counted a second time as hutch-schedule's.
    pool = WorkerPool(**pool_kwargs)
    ran: list[Any] = []

    @pool.consumer("app.work", max_deliveries=MAX_DELIVERIES)
    async def work(ctx: object, msg: Any) -> None:
        ran.append(msg)

    async with pool.running():
        pass  # declares the topology
    queue, dead_queue = f"{iso.namespace}:work", wire.dead_queue_name(iso.namespace, iso.exchange)
    park = wire.park_queue_name(iso.namespace, iso.exchange, 5)
    entry = wire.park_entry_exchange_name(iso.exchange)
    death = {
        "count": 1,
        "reason": "expired",
        "queue": park,
        "exchange": entry,
        "routing-keys": [park, "app.work"],
    }
    headers = {
        wire.H_RETRIES: 1,
        wire.H_FOREIGN_FAILURES: 0,
        wire.H_ROUTING_KEY: "app.work",
        wire.H_DELIVERIES: MAX_DELIVERIES - 1,
        "x-death": [death],
    }
    await probe.publish("", queue, b"{}", delivery_mode=2, message_id="crashed", headers=headers)
    taker = await probe.new_channel()
    got = await taker.basic_get(queue, no_ack=False)
    assert not isinstance(got.delivery, spec.Basic.GetEmpty)
    await taker.close()  # unsettled: the broker hands it back, redelivered, as after a worker's death

    async with pool.running():

        async def dead() -> bool:
            return await probe.depth(dead_queue) == 1

        await eventually(dead, timeout=10)
    [copy] = await probe.take_all(dead_queue)
    assert ran == []
    assert copy.header.properties.message_id == "crashed"
    assert copy.header.properties.headers[wire.H_DELIVERIES] == MAX_DELIVERIES
    assert copy.header.properties.headers[wire.H_RETRIES] == 1  # was 2: the park death counted as Ruby's
