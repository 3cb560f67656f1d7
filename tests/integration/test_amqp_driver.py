"""event.amqp against the real broker: what each call answers, confirms, consumers, returns, errors.

Every queue and exchange a test declares starts with its own prefix and is deleted afterwards."""

from __future__ import annotations

import asyncio
import random
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import Management, eventually
from tls_support import TlsTerminator, amqps_url

from event import amqp, driver
from event.errors import ConnectionFailed

JSON = driver.Properties(content_type="application/json", delivery_mode=2)


@pytest.fixture
def prefix() -> str:
    return f"drv-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def connection(amqp_url: str, prefix: str, management: Management) -> AsyncIterator[driver.Connection]:
    opened = await amqp.open_connection(amqp_url, name=prefix, timeout=10)
    yield opened
    await opened.close()
    for name in management.queue_names():
        if name.startswith(prefix):
            management.delete_queue(name)
    for suffix in ("", ".a", ".b"):
        management.delete_exchange(prefix + suffix)


async def consume_n(channel: driver.Channel, queue: str, n: int, **kwargs: Any) -> list[driver.Delivery]:
    got: list[driver.Delivery] = []
    enough = asyncio.Event()

    def on_delivery(delivery: driver.Delivery) -> None:
        got.append(delivery)
        if len(got) >= n:
            enough.set()

    tag = await channel.basic_consume(queue, on_delivery, **kwargs)
    async with asyncio.timeout(20):
        await enough.wait()
    await channel.basic_cancel(tag)
    return got


async def test_declare_bind_purge_and_delete_answer_what_the_broker_says(
    connection: driver.Connection, prefix: str, management: Management
) -> None:
    channel = await connection.channel(confirms=True)
    await channel.exchange_declare(prefix, "topic", durable=True)
    await channel.exchange_declare(prefix + ".a", "fanout")
    await channel.exchange_bind(prefix + ".a", prefix, "app.#")
    assert await channel.queue_declare(prefix + "-q", durable=True) == driver.QueueInfo(prefix + "-q", 0, 0)
    await channel.queue_bind(prefix + "-q", prefix + ".a")
    for n in range(3):
        await channel.basic_publish(b"%d" % n, exchange=prefix, routing_key="app.x", properties=JSON)
    info = await channel.queue_declare(prefix + "-q", passive=True)
    assert (info.message_count, info.consumer_count) == (3, 0)
    assert await channel.queue_purge(prefix + "-q") == 3
    await channel.queue_unbind(prefix + "-q", prefix + ".a")
    assert [b["source"] for b in management.bindings_of(prefix + "-q")] == [""]  # the default binding only
    await channel.basic_publish(b"x", routing_key=prefix + "-q")  # through the default exchange
    assert await channel.queue_delete(prefix + "-q") == 1
    named = await channel.queue_declare("", exclusive=True)
    assert named.queue.startswith("amq.gen-")
    await channel.exchange_delete(prefix + ".a")
    await channel.exchange_delete(prefix)
    assert not channel.is_closed


async def test_confirmed_publishes_are_consumed_in_order_and_ack_multiple_settles_them(
    connection: driver.Connection, prefix: str
) -> None:
    publisher = await connection.channel(confirms=True)
    queue = (await publisher.queue_declare(prefix + "-q", durable=True)).queue
    await asyncio.gather(
        *(publisher.basic_publish(b"%d" % n, routing_key=queue, properties=JSON) for n in range(1000))
    )
    assert (await publisher.queue_declare(queue, passive=True)).message_count == 1000

    consumer = await connection.channel()
    await consumer.basic_qos(100)
    got: list[driver.Delivery] = []
    done = asyncio.Event()

    def on_delivery(delivery: driver.Delivery) -> None:
        got.append(delivery)
        if len(got) % 50 == 0:
            consumer.basic_ack(delivery.delivery_tag, multiple=True)
        if len(got) == 1000:
            done.set()

    await consumer.basic_consume(queue, on_delivery)
    async with asyncio.timeout(20):
        await done.wait()
    assert [int(d.body) for d in got] == list(range(1000))
    assert [d.delivery_tag for d in got] == list(range(1, 1001))
    assert got[0].properties.content_type == "application/json" and got[0].properties.delivery_mode == 2
    assert got[0].routing_key == queue and not got[0].redelivered and got[0].consumer_tag
    await consumer.close()  # nothing unacked to requeue: the queue stays empty
    assert (await publisher.queue_declare(queue, passive=True)).message_count == 0


async def test_a_nacked_delivery_comes_back_and_a_rejected_one_is_gone(
    connection: driver.Connection, prefix: str
) -> None:
    channel = await connection.channel(confirms=True)
    queue = (await channel.queue_declare(prefix + "-q", durable=True)).queue
    await channel.basic_publish(b"again", routing_key=queue)
    await channel.basic_publish(b"drop", routing_key=queue)
    consumer = await connection.channel()
    first = await consume_n(consumer, queue, 2)
    assert [d.body for d in first] == [b"again", b"drop"]
    consumer.basic_nack(first[0].delivery_tag, requeue=True)
    consumer.basic_reject(first[1].delivery_tag, requeue=False)
    again = await consume_n(consumer, queue, 1)
    assert again[0].body == b"again" and again[0].redelivered
    consumer.basic_ack(again[0].delivery_tag)
    await consumer.close()
    assert (await channel.queue_declare(queue, passive=True)).message_count == 0


async def test_get_gives_a_delivery_with_what_is_left_or_none(
    connection: driver.Connection, prefix: str
) -> None:
    channel = await connection.channel(confirms=True)
    queue = (await channel.queue_declare(prefix + "-q", durable=True)).queue
    big = bytes(random.getrandbits(8) for _ in range(300_000))  # several body frames
    await channel.basic_publish(big, routing_key=queue, properties=driver.Properties(message_id="m1"))
    await channel.basic_publish(b"", routing_key=queue)  # no body frame at all
    got = await channel.basic_get(queue)
    assert got is not None
    assert (got.body, got.properties.message_id, got.message_count, got.consumer_tag) == (big, "m1", 1, "")
    channel.basic_ack(got.delivery_tag)
    empty_body = await channel.basic_get(queue, no_ack=True)
    assert empty_body is not None and empty_body.body == b"" and empty_body.message_count == 0
    assert await channel.basic_get(queue) is None


async def test_each_return_fails_the_publish_it_belongs_to_and_no_other(
    connection: driver.Connection, prefix: str
) -> None:
    """Many mandatory publishes in flight, routable and unroutable mixed, every one with the same
    message id: exactly the unroutable ones raise Returned."""
    channel = await connection.channel(confirms=True)
    await channel.exchange_declare(prefix, "direct", auto_delete=True)
    queue = (await channel.queue_declare(prefix + "-q", durable=True)).queue
    await channel.queue_bind(queue, prefix, "routed")
    same = driver.Properties(message_id="the-same-id", delivery_mode=2)
    plan = [random.choice(["routed", "nowhere"]) for _ in range(400)]
    results = await asyncio.gather(
        *(
            channel.basic_publish(
                b"same body", exchange=prefix, routing_key=key, properties=same, mandatory=True
            )
            for key in plan
        ),
        return_exceptions=True,
    )
    for key, result in zip(plan, results, strict=True):
        if key == "routed":
            assert result is None
        else:
            assert isinstance(result, driver.Returned)
            assert result.message.reply_code == 312 and result.message.routing_key == "nowhere"
            assert result.message.properties.message_id == "the-same-id"
    assert (await channel.queue_declare(queue, passive=True)).message_count == plan.count("routed")
    await channel.basic_publish(b"after", exchange=prefix, routing_key="routed", mandatory=True)


async def test_returns_with_distinct_bodies_go_to_their_own_publish(
    connection: driver.Connection, prefix: str
) -> None:
    channel = await connection.channel(confirms=True)
    await channel.exchange_declare(prefix, "direct", auto_delete=True)
    queue = (await channel.queue_declare(prefix + "-q", durable=True)).queue
    await channel.queue_bind(queue, prefix, "routed")
    plan = [(random.choice(["routed", "nowhere"]), b"%d" % n) for n in range(300)]
    results = await asyncio.gather(
        *(
            channel.basic_publish(body, exchange=prefix, routing_key=key, mandatory=True)
            for key, body in plan
        ),
        return_exceptions=True,
    )
    returned = [r.message.body for r in results if isinstance(r, driver.Returned)]
    assert returned == [body for key, body in plan if key == "nowhere"]


async def test_broker_errors_raise_and_close_the_channel_not_the_connection(
    connection: driver.Connection, prefix: str
) -> None:
    channel = await connection.channel()
    with pytest.raises(driver.NotFound, match=f"no queue '{prefix}-missing'") as missing:
        await channel.queue_declare(prefix + "-missing", passive=True)
    assert missing.value.reply_code == 404
    assert channel.is_closed
    assert isinstance(channel.closing.exception(), driver.NotFound)
    with pytest.raises(driver.ChannelInvalidState):
        await channel.queue_declare(prefix + "-q", durable=True)
    with pytest.raises(driver.ChannelInvalidState):
        channel.basic_ack(1)

    other = await connection.channel()
    await other.queue_declare(prefix + "-q", durable=True, arguments={"x-max-length": 10})
    with pytest.raises(driver.PreconditionFailed, match="inequivalent arg 'x-max-length'"):
        await other.queue_declare(prefix + "-q", durable=True, arguments={"x-max-length": 20})
    assert isinstance(other.closing.exception(), driver.PreconditionFailed)

    publisher = await connection.channel(confirms=True)
    with pytest.raises(driver.NotFound, match="no exchange"):
        await publisher.basic_publish(b"x", exchange=prefix + "-nowhere", routing_key="k")
    assert not connection.is_closed
    third = await connection.channel()
    assert third.number in (channel.number, other.number, publisher.number)  # numbers are reused
    await third.queue_delete(prefix + "-q")


async def test_deleting_the_queue_cancels_its_consumer(connection: driver.Connection, prefix: str) -> None:
    channel = await connection.channel()
    queue = (await channel.queue_declare(prefix + "-q", durable=True)).queue
    cancelled: list[str] = []
    tag = await channel.basic_consume(queue, lambda d: None, on_cancel=cancelled.append)
    admin = await connection.channel()
    await admin.queue_delete(queue)
    await eventually(lambda: cancelled == [tag], timeout=5)
    assert not channel.is_closed
    await channel.queue_declare(prefix + "-other", durable=True)  # the channel still works


async def test_a_connection_closed_from_outside_fails_pending_publishes(
    connection: driver.Connection, prefix: str, management: Management
) -> None:
    channel = await connection.channel(confirms=True)
    queue = (await channel.queue_declare(prefix + "-q", durable=True)).queue
    consumer = await connection.channel()
    stopped: list[BaseException] = []

    async def publish_forever() -> None:
        try:
            while True:
                await channel.basic_publish(b"x" * 1000, routing_key=queue, properties=JSON)
        except driver.AMQPError as exc:
            stopped.append(exc)

    publishers = [asyncio.create_task(publish_forever()) for _ in range(200)]

    # The management API lists a connection once its stats are in: wait until the DELETE finds it. In a
    # thread, so that the publishers keep going meanwhile and some are in flight at the kill.
    def kill() -> bool:
        return management.close_connections(prefix) == 1

    await eventually(lambda: asyncio.to_thread(kill), timeout=30, interval=0.5)
    async with asyncio.timeout(10):
        await asyncio.gather(*publishers)
    # A publish in flight fails with ConnectionClosed; one its task began after the close (its previous
    # publish confirmed in the broker's last words), with ChannelInvalidState. None hangs or succeeds.
    kinds = [type(exc) for exc in stopped]
    assert len(stopped) == 200 and set(kinds) <= {driver.ConnectionClosed, driver.ChannelInvalidState}
    assert driver.ConnectionClosed in kinds
    closed = connection.closing.exception()
    assert isinstance(closed, driver.ConnectionClosed) and closed.reply_code == 320
    assert "CONNECTION_FORCED" in closed.reply_text
    assert isinstance(channel.closing.exception(), driver.ConnectionClosed)
    assert isinstance(consumer.closing.exception(), driver.ConnectionClosed)
    with pytest.raises(driver.ChannelInvalidState):
        await connection.channel()
    with pytest.raises(driver.ChannelInvalidState):
        await channel.basic_publish(b"late", routing_key=queue)


async def test_connect_errors_say_what_to_fix(amqp_url: str, prefix: str) -> None:
    with pytest.raises(ConnectionFailed, match=r"refused the login .*check the user and password") as login:
        await amqp.open_connection(amqp_url.replace("guest:guest", "guest:wrong"), name=prefix, timeout=10)
    assert "wrong" not in str(login.value) and "***" in str(login.value)
    vhost = f"{prefix}-no-such-vhost"
    with pytest.raises(ConnectionFailed, match=rf"refused vhost '{vhost}'.*rabbitmqctl add_vhost {vhost}"):
        await amqp.open_connection(amqp_url.rstrip("/") + "/" + vhost, name=prefix, timeout=10)
    with pytest.raises(
        ConnectionFailed, match=r"cannot reach RabbitMQ at amqp://guest:\*\*\*@127.0.0.1:1/.*"
    ):
        await amqp.open_connection("amqp://guest:secret@127.0.0.1:1/", name=prefix, timeout=10)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionFailed, match=r"did not answer within 0.5 s"):
            await amqp.open_connection(f"amqp://guest:guest@127.0.0.1:{port}/", name=prefix, timeout=0.5)
    finally:
        server.close()
        await server.wait_closed()


async def test_the_broker_sees_our_name_and_capabilities(
    connection: driver.Connection, prefix: str, management: Management, amqp_url: str
) -> None:
    def listed() -> bool:
        return any(
            (c.get("client_properties") or {}).get("connection_name") == prefix
            for c in management.connections()
        )

    await eventually(listed, timeout=30, interval=0.5)
    ours = next(
        c
        for c in management.connections()
        if (c.get("client_properties") or {}).get("connection_name") == prefix
    )
    properties = ours["client_properties"]
    assert properties["product"] == "event (Python)"
    assert properties["capabilities"]["authentication_failure_close"] is True
    assert properties["capabilities"]["consumer_cancel_notify"] is True
    assert ours["frame_max"] == 131072 and ours["timeout"] == 60
    assert connection.node.endswith(amqp_url.rsplit("@", 1)[1]) and "guest:***@" in connection.node


async def test_amqps_with_a_client_certificate_and_clear_tls_errors(
    amqp_url: str, prefix: str, tmp_path: Path, certificates: dict[str, str], terminator: TlsTerminator
) -> None:
    parts = urllib.parse.urlsplit(amqp_url)

    def url(port: int, **query: str) -> str:
        return amqps_url(amqp_url, port, **query)

    tls = terminator
    good = url(
        tls.port,
        cafile=certificates["ca"],
        certfile=certificates["client_cert"],
        keyfile=certificates["client_key"],
    )
    connection = await amqp.open_connection(good, name=prefix, timeout=10)
    channel = await connection.channel(confirms=True)
    queue = (await channel.queue_declare("", exclusive=True)).queue
    await channel.basic_publish(b"over tls", routing_key=queue)
    got = await channel.basic_get(queue, no_ack=True)
    assert got is not None and got.body == b"over tls"
    await connection.close()
    assert tls.clients == ["event-worker"]

    with pytest.raises(ConnectionFailed, match=r"TLS handshake .* CERTIFICATE_VERIFY_FAILED") as untrusted:
        await amqp.open_connection(url(tls.port), name=prefix, timeout=10)
    assert f"localhost:{tls.port}" in str(untrusted.value) and f":{parts.password}@" not in str(
        untrusted.value
    )
    # Not verifying the server: the handshake gets as far as the missing client certificate.
    with pytest.raises(ConnectionFailed, match=f"localhost:{tls.port}"):
        await amqp.open_connection(url(tls.port, no_verify_ssl="1"), name=prefix, timeout=10)
    with pytest.raises(ConnectionFailed, match=r"cannot load the TLS files"):
        await amqp.open_connection(
            url(tls.port, cafile=str(tmp_path / "missing.pem")), name=prefix, timeout=10
        )
    assert tls.clients == ["event-worker"]
