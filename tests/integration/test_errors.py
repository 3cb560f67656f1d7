"""Clear errors for an unreachable broker, bad credentials, unroutable and closed publishes."""

from __future__ import annotations

from typing import Any

import pytest
from support import Isolation

from event import ConnectionFailed, Publisher, Unroutable, WorkerPool


async def test_unreachable_broker_names_the_url_without_password_and_how_to_start_one() -> None:
    url = "amqp://guest:s3cret@127.0.0.1:1/"
    with pytest.raises(ConnectionFailed) as caught:
        async with Publisher(url):
            pass
    text = str(caught.value)
    assert "amqp://guest:***@127.0.0.1:1/" in text
    assert "s3cret" not in text
    assert "rabbitmq-server -detached" in text


async def test_wrong_credentials_are_named_as_such(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest", "guest:wrong")
    pool = WorkerPool(bad)

    @pool.consumer("app.a")
    async def a(ctx: object, msg: object) -> None: ...

    with pytest.raises(ConnectionFailed, match=r"refused the login.*user and password") as caught:
        async with pool.running():
            pass
    assert "wrong" not in str(caught.value)


async def test_unknown_vhost_says_how_to_create_it(amqp_url: str) -> None:
    with pytest.raises(ConnectionFailed, match=r"vhost 'no-such-vhost'.*rabbitmqctl add_vhost"):
        async with Publisher(amqp_url.rstrip("/") + "/no-such-vhost"):
            pass


async def test_mandatory_publish_without_a_queue_raises_unroutable(pool_kwargs: dict[str, Any]) -> None:
    async with Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.nobody", {"n": 1})  # not mandatory: the broker drops it, as asked
        with pytest.raises(Unroutable, match=r"'app\.nobody'"):
            await publisher.publish("app.nobody", {"n": 2}, mandatory=True)
        await publisher.publish("app.nobody", {"n": 3})  # the channel survives a return


async def test_publish_on_a_closed_publisher_raises_connection_failed(pool_kwargs: dict[str, Any]) -> None:
    publisher = Publisher(**pool_kwargs)
    with pytest.raises(ConnectionFailed, match="not connected"):
        await publisher.publish("app.a", {})
    async with publisher:
        pass
    with pytest.raises(ConnectionFailed):
        await publisher.publish("app.a", {})


async def test_unserialisable_payload_names_routing_key_and_type(pool_kwargs: dict[str, Any]) -> None:
    async with Publisher(**pool_kwargs) as publisher:
        with pytest.raises(TypeError, match=r"'app.a'.*set"):
            await publisher.publish("app.a", {"tags": {1, 2}})


async def test_pool_without_consumers_says_so(amqp_url: str, iso: Isolation) -> None:
    from event import ConfigurationError

    with pytest.raises(ConfigurationError, match="no consumers"):
        await WorkerPool(amqp_url, namespace=iso.namespace).run(install_signal_handlers=False)


async def test_a_full_queue_that_rejects_publishes_raises_publish_nacked(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Any
) -> None:
    from event import PublishNacked

    channel = await probe.channel()
    queue = f"{iso.namespace}:bounded"
    await channel.exchange_declare(iso.exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(
        queue, durable=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    await channel.queue_bind(queue, iso.exchange, routing_key="app.bounded")
    async with Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.bounded", {"n": 1})
        await publisher.publish("app.bounded", {"n": 2})
        with pytest.raises(PublishNacked, match="was not stored"):
            await publisher.publish("app.bounded", {"n": 3})  # told, not silently dropped
    assert await probe.depth(queue) == 2
