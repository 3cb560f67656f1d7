"""A confirm that does not come within the publisher's timeout fails its publish, about then, and only it.

The broker is real; between it and the publisher runs a relay that can hold back what the broker sends
(its confirms among it) while passing on what the publisher sends: the broker stores the message, the
publisher never hears so, and must not report it sent.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

import pytest
from relay_support import Relay, relayed
from support import Isolation

from event import Publisher, PublishTimeout

TIMEOUT = 0.5


async def test_a_confirm_held_back_fails_the_publish_with_publish_timeout_and_later_ones_go_through(
    amqp_url: str, iso: Isolation, probe: Any
) -> None:
    parts = urllib.parse.urlsplit(amqp_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5672))
    await relay.start()
    queue = f"{iso.namespace}:sink"
    channel = await probe.channel()
    await channel.queue_declare(queue, durable=True)
    try:
        url = relayed(amqp_url, relay.port)
        async with Publisher(
            url, namespace=iso.namespace, exchange=iso.exchange, timeout=TIMEOUT
        ) as publisher:
            await channel.queue_bind(queue, iso.exchange, routing_key="app.#")
            await publisher.publish("app.n", {"n": 0})  # through the relay, confirmed
            relay.passing.clear()
            started = time.monotonic()
            results = await asyncio.gather(
                *(publisher.publish("app.n", {"n": n}) for n in range(1, 11)), return_exceptions=True
            )
            waited = time.monotonic() - started
            relay.passing.set()
            assert [type(r) for r in results] == [PublishTimeout] * 10, results
            assert "routing key 'app.n'" in str(results[0]) and f"within {TIMEOUT:g} s" in str(results[0])
            assert TIMEOUT * 0.9 <= waited < TIMEOUT * 3, waited  # about its timeout: not at once, nor late
            await publisher.publish("app.n", {"n": 11})  # the late confirms are dropped; the channel goes on
            assert publisher.stats.failures == {(iso.exchange, "PublishTimeout"): 10}
            assert sum(publisher.stats.published.values()) == 2
    finally:
        await relay.close()
    # The broker stored the messages whose confirms were held back: a timeout says "not known to be
    # stored", never "not stored".
    assert await probe.depth(queue) == 12


@pytest.mark.parametrize("timeouts", [(5.0, 0.3), (0.3, 5.0)])
async def test_publishes_with_different_timeouts_on_one_channel_each_fail_at_their_own(
    amqp_url: str, iso: Isolation, timeouts: tuple[float, float]
) -> None:
    # The driver's one timer per channel, given deadlines out of order: the earlier must not wait for
    # the later.
    from event import amqp

    parts = urllib.parse.urlsplit(amqp_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5672))
    await relay.start()
    connection = await amqp.open_connection(relayed(amqp_url, relay.port), name=f"timeouts-{iso.namespace}")
    try:
        channel = await connection.channel(confirms=True)
        relay.passing.clear()
        loop = asyncio.get_running_loop()
        started = loop.time()
        failed_at: dict[float, float] = {}

        async def one(timeout: float) -> None:
            with pytest.raises(TimeoutError):
                await channel.basic_publish(b"{}", exchange="", routing_key="nowhere", timeout=timeout)
            failed_at[timeout] = loop.time() - started

        first, second = (asyncio.create_task(one(t)) for t in timeouts)
        await asyncio.wait_for(asyncio.shield(asyncio.gather(first, second)), timeout=10)
        relay.passing.set()
        short, long = sorted(timeouts)
        assert short * 0.9 <= failed_at[short] < short + 0.5, failed_at
        assert long * 0.9 <= failed_at[long] < long + 0.5, failed_at
    finally:
        await connection.close()
        await relay.close()
