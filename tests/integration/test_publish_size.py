"""A body over the broker's message size limit fails at publish, naming its size and the limit."""

from __future__ import annotations

from typing import Any

import pytest
from support import Isolation, Probe

from event import ConfigurationError, Publisher, PublishError, wire
from event.publisher import DEFAULT_MAX_BODY_BYTES, properties


def test_the_default_limit_is_rabbitmq_4s_16_mib() -> None:
    assert Publisher(max_body_bytes=DEFAULT_MAX_BODY_BYTES).max_body_bytes == 16 * 1024 * 1024
    assert Publisher().max_body_bytes == DEFAULT_MAX_BODY_BYTES
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        Publisher(max_body_bytes=-1)


async def test_a_body_over_the_limit_is_refused_before_it_is_sent(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    queue = f"{iso.namespace}:sized"
    iso.extra_queues.append(queue)
    async with Publisher(**pool_kwargs, max_body_bytes=1000) as publisher:
        channel = await probe.channel()
        await channel.queue_declare(queue, durable=True)
        await channel.queue_bind(queue, iso.exchange, routing_key="app.sized")
        fits = "x" * (1000 - 2)  # a JSON string: two quotes around it
        await publisher.publish("app.sized", fits)
        with pytest.raises(PublishError, match=r"body of 1001 bytes, over the limit of 1000 bytes"):
            await publisher.publish("app.sized", fits + "x")
        with pytest.raises(PublishError, match=r"body of 1001 bytes, over the limit of 1000 bytes"):
            await publisher.publish_in(30, "app.sized", fits + "x")  # the delayed way too
        await publisher.publish("app.sized", {"after": True})  # the channel is still good
    bodies = [m.body for m in await probe.take_all(queue)]
    assert bodies == [f'"{fits}"'.encode(), b'{"after":true}']
    assert await probe.depth(wire.park_queue_name(iso.namespace, iso.exchange, 30)) == 0


async def test_the_default_limit_holds_without_reaching_the_broker(pool_kwargs: dict[str, Any]) -> None:
    async with Publisher(**pool_kwargs) as publisher:
        with pytest.raises(PublishError, match=rf"body of {16 * 1024 * 1024 + 1} bytes, over the limit of"):
            await publisher.publish_raw("app.big", b"x" * (16 * 1024 * 1024 + 1), properties())
