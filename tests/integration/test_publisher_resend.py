"""Publishes in flight when the publisher's connection dies are sent again: each arrives at least once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
from support import Isolation, Management, eventually

from event import Publisher

N = 2_000


async def test_publishes_in_flight_when_the_connection_is_closed_all_arrive(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management, probe: Any
) -> None:
    channel = await probe.channel()
    queue = f"{iso.namespace}:sink"
    await channel.queue_declare(queue, durable=True)
    name = f"publisher-{iso.namespace}"
    async with Publisher(**pool_kwargs, connection_name=name, reconnect_timeout=30) as publisher:
        await channel.queue_bind(queue, iso.exchange, routing_key="app.#")
        tasks: list[asyncio.Task[None]] = []

        async def feed() -> None:
            # A steady stream rather than one burst, so that confirms are outstanding when the close lands.
            for n in range(N):
                tasks.append(asyncio.create_task(publisher.publish("app.n", {"n": n})))
                if n % 10 == 9:
                    await asyncio.sleep(0.005)

        feeding = asyncio.create_task(feed())
        await eventually(lambda: sum(publisher.stats.published.values()) >= N // 5, interval=0.005)
        closed = await asyncio.to_thread(management.close_connections, name)
        await feeding
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert closed == 1
    assert [r for r in results if r is not None] == []  # every caller saw a confirm

    def all_there() -> Any:
        async def check() -> bool:
            return bool(await probe.depth(queue) >= N)

        return check()

    await eventually(all_there, timeout=10)
    arrived = Counter(orjson.loads(m.body)["n"] for m in await probe.take_all(queue))
    duplicates = sum(arrived.values()) - N
    print(
        f"\n{N} published, connection closed mid-way: "
        f"{publisher.stats.resent} re-sent, {duplicates} duplicates"
    )
    assert set(arrived) == set(range(N))  # none lost
    assert publisher.stats.resent > 0  # the close did interrupt publishes
    assert duplicates <= publisher.stats.resent  # a duplicate only ever comes from a re-send
