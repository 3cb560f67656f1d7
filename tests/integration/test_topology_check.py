"""`topology.differences` (behind `event topology --check`) on RabbitMQ 3.x and 4.x alike.

4.x reports arguments nobody declared (``x-queue-type: classic``); they are no difference, but an
argument the broker holds at another value than ours still is.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import Isolation, Management, Probe, eventually

from event import WorkerPool, topology
from event.management import ManagementApi


def a_pool(pool_kwargs: dict[str, Any], queue_type: str | None = None) -> WorkerPool:
    pool = WorkerPool(**pool_kwargs, queue_type=queue_type)

    @pool.consumer("app.send_email")
    async def send_email(ctx: object, msg: object) -> None: ...

    @pool.consumer("app.user.*", arguments={"x-max-length": 50})
    async def users(ctx: object, msg: object) -> None: ...

    return pool


@pytest.mark.parametrize("queue_type", [None, "quorum"])
async def test_a_freshly_declared_pool_has_no_differences(
    queue_type: str | None, pool_kwargs: dict[str, Any], amqp_url: str, management: Management
) -> None:
    pool = a_pool(pool_kwargs, queue_type)
    api = ManagementApi.for_url(amqp_url, management.base)
    found: list[str] = []

    async def matches() -> bool:
        found[:] = await topology.differences(pool.topology(), api)
        return not found

    async with pool.running():
        await eventually(matches, timeout=15, interval=0.5)  # the API learns of new queues a moment later
    assert found == []


@pytest.mark.parametrize(
    ("theirs", "named"),
    [({"x-queue-type": "quorum"}, "'x-queue-type': 'quorum'"), ({"x-max-length": 10}, "'x-max-length': 10")],
    ids=["another queue type", "another argument"],
)
async def test_a_queue_with_other_arguments_is_a_difference(
    theirs: dict[str, Any],
    named: str,
    pool_kwargs: dict[str, Any],
    iso: Isolation,
    amqp_url: str,
    management: Management,
    probe: Probe,
) -> None:
    pool = a_pool(pool_kwargs)
    async with pool.running():
        pass
    queue = f"{iso.namespace}:send_email"
    management.delete_queue(queue)
    channel = await probe.channel()
    await channel.queue_declare(queue, durable=True, arguments=theirs)
    await channel.queue_bind(queue, iso.exchange, routing_key="app.send_email")
    await channel.queue_bind(queue, iso.exchange, routing_key=queue)
    api = ManagementApi.for_url(amqp_url, management.base)
    found: list[str] = []

    async def differs() -> bool:
        found[:] = await topology.differences(pool.topology(), api)
        return any("has arguments" in line for line in found)

    await eventually(differs, timeout=15, interval=0.5)
    [line] = [f for f in found if "has arguments" in f]  # (its unpark binding is missing too)
    assert f"send_email {queue!r} has arguments" in line and named in line, line
