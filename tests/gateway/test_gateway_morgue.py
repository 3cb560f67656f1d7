"""10,000 dead messages through `event serve`: paging reaches the newest and the oldest, a search by error
text answers within 2 s, browsing adds no redelivery while the dead queue is unchanged, and "requeue all
matching" sends exactly what the filter matches. The dead queue is filled as the dispatcher fills it (its
arguments and headers), by a raw channel of the test's own, for speed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from aiormq import spec
from gateway_support import gateway
from support import Isolation, Management, Probe, eventually

from event import wire

pytestmark = pytest.mark.timeout(300)

COUNT = 10_000


async def fill(probe: Probe, iso: Isolation, dead_queue: str, sink: str) -> None:
    # Without confirms: awaiting one per message, one after another (the order is the queue's, which the
    # pages show), took 17-25 s; the depth below shows that every message arrived.
    channel = await probe.new_channel(confirms=False)
    await channel.queue_declare(dead_queue, durable=True, arguments=wire.dead_queue_arguments())
    await channel.queue_declare(sink, durable=True)
    start_ms = int(time.time() * 1000) - COUNT
    for i in range(COUNT):
        headers: dict[str, Any] = {
            wire.H_ERROR: f"RuntimeError: boom {i}",
            wire.H_QUEUE: sink,
            wire.H_ROUTING_KEY: "morgue.even" if i % 2 == 0 else "morgue.odd",
            wire.H_FAILED_AT: start_ms + i,  # one a millisecond, the newest last
        }
        properties = spec.Basic.Properties(message_id=f"m-{i}", headers=headers, delivery_mode=2)
        await channel.basic_publish(
            b'{"n": %d}' % i, exchange="", routing_key=dead_queue, properties=properties
        )

    async def all_there() -> bool:
        return await probe.depth(dead_queue) == COUNT

    await eventually(all_there, timeout=60)


async def test_ten_thousand_dead_messages_paged_searched_and_browsed_without_redelivery(
    amqp_url: str, iso: Isolation, management: Management, probe: Probe
) -> None:
    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    sink = f"{iso.namespace}:sink"
    await fill(probe, iso, dead_queue, sink)
    async with (
        gateway(amqp_url, iso, management) as gw,
        httpx.AsyncClient(base_url=gw.base, timeout=60) as client,
    ):
        started = time.monotonic()
        newest = (await client.get("/api/dead", params={"limit": "50"})).json()
        first_read_s = time.monotonic() - started
        assert (newest["total"], newest["matching"]) == (COUNT, COUNT)
        assert [m["message_id"] for m in newest["messages"][:2]] == [f"m-{COUNT - 1}", f"m-{COUNT - 2}"]
        oldest = (await client.get("/api/dead", params={"offset": str(COUNT - 50), "limit": "50"})).json()
        assert oldest["messages"][-1]["message_id"] == "m-0"

        started = time.monotonic()
        found = (await client.get("/api/dead", params={"error": "boom 1234", "limit": "50"})).json()
        search_s = time.monotonic() - started
        assert search_s < 2.0 and [m["message_id"] for m in found["messages"]] == ["m-1234"]
        odd = (await client.get("/api/dead", params={"routing_key": "morgue.odd", "limit": "1"})).json()
        assert odd["matching"] == COUNT // 2
        print(
            f"first read of {COUNT} dead messages: {first_read_s:.2f} s; a search: {search_s * 1000:.0f} ms"
        )

        # Browsing an unchanged dead queue redelivers nothing: one read so far, however often it is asked.
        def redelivered() -> int:
            stats = management.queue(dead_queue).get("message_stats") or {}
            return int(stats.get("redeliver", 0))

        # RabbitMQ counts a redelivery when a message handed back is delivered again: the first read
        # handed every message back, so any later read would count COUNT of them.
        for offset in range(0, 20 * 500, 500):  # 20 page views, as tabs polling would make
            page = (await client.get("/api/dead", params={"offset": str(offset), "limit": "500"})).json()
            assert page["reads"] == 1
        await asyncio.sleep(6)  # the management API's statistics come every 5 s
        assert redelivered() == 0

        # Requeue all matching a filter: exactly those, and the next page view reads the queue again.
        requeued = await client.post("/api/dead/requeue", params={"matching": "true", "error": "boom 99"})
        assert requeued.status_code == 200, requeued.text
        expected = {f"m-{i}" for i in range(COUNT) if f"boom {i}".startswith("boom 99")}
        assert set(requeued.json()["requeued"]) == expected and len(expected) == 111
        assert await probe.depth(sink) == 111
        after = (await client.get("/api/dead", params={"limit": "1"})).json()
        assert after["total"] == COUNT - 111 and after["reads"] == 1  # dropped from the snapshot at once

        # RabbitMQ puts the rest back into the queue over a while; once its count settled, one more read.
        async def read_again() -> bool:
            page = (await client.get("/api/dead", params={"limit": "1"})).json()
            return bool(page["reads"] == 2 and page["total"] == COUNT - 111)

        await eventually(read_again, timeout=150, interval=1)
