"""Large bodies leave as their own bytes, not a joined copy (event.amqp.frames.encode_content_parts,
AMQPConnection.send_parts): what the broker delivers is what was published, byte for byte and in order,
with small messages between the large ones, on both loops (uvloop writes the pieces with writelines,
Python 3.11's socket transport piece by piece) and over TLS (whose transport writes the list itself).

Every queue a test declares is exclusive to its connection: gone when the test's connection closes."""

from __future__ import annotations

import asyncio
import random

import pytest
from tls_support import TlsTerminator, amqps_url

from event import amqp, driver
from event.amqp import frames

FRAME_PAYLOAD = 131072 - 8  # the body bytes of one frame at RabbitMQ's frame_max
SIZES = [
    frames.LARGE_BODY - 1,  # the last size joined into one write
    frames.LARGE_BODY,  # the first written as pieces
    FRAME_PAYLOAD,  # one whole body frame
    FRAME_PAYLOAD + 1,  # a frame and a byte
    1024 * 1024 + 3,  # nine frames, the last a short one
]


def body(n: int, size: int) -> bytes:
    """Random bytes of their own for message ``n``: a piece out of place, or of another message, shows."""
    return random.Random(n).randbytes(size)


async def round_trip(url: str) -> None:
    connection = await amqp.open_connection(url, name="large bodies", timeout=10)
    try:
        channel = await connection.channel(confirms=True)
        queue = (await channel.queue_declare("", exclusive=True)).queue
        sent: list[bytes] = []
        for n, size in enumerate(SIZES):
            sent += [body(2 * n, size), body(2 * n + 1, 10)]  # a small message behind each large one
        # All in flight at once: the large ones' pieces and the small ones share the flushes.
        await asyncio.gather(*(channel.basic_publish(each, routing_key=queue) for each in sent))
        got: list[bytes] = []
        done = asyncio.Event()

        def on_delivery(delivery: driver.Delivery) -> None:
            got.append(delivery.body)
            if len(got) == len(sent):
                done.set()

        consumer = await channel.basic_consume(queue, on_delivery, no_ack=True)
        async with asyncio.timeout(30):
            await done.wait()
        await channel.basic_cancel(consumer)
        assert [len(each) for each in got] == [len(each) for each in sent]
        assert got == sent
    finally:
        await connection.close()


@pytest.mark.both_loops
async def test_large_and_small_bodies_arrive_whole_and_in_order(amqp_url: str) -> None:
    await round_trip(amqp_url)


async def test_large_bodies_arrive_whole_over_tls(
    amqp_url: str, certificates: dict[str, str], terminator: TlsTerminator
) -> None:
    await round_trip(
        amqps_url(
            amqp_url,
            terminator.port,
            cafile=certificates["ca"],
            certfile=certificates["client_cert"],
            keyfile=certificates["client_key"],
        )
    )


@pytest.mark.both_loops
async def test_a_bytearray_body_changed_after_its_publish_is_delivered_as_it_was(amqp_url: str) -> None:
    connection = await amqp.open_connection(amqp_url, name="large bodies", timeout=10)
    try:
        channel = await connection.channel()  # no confirms: the publish returns before the write
        queue = (await channel.queue_declare("", exclusive=True)).queue
        buffer = bytearray(b"a" * (3 * FRAME_PAYLOAD))
        await channel.basic_publish(buffer, routing_key=queue)  # type: ignore[arg-type]
        buffer[:] = b"b" * 10  # the caller reuses its buffer (resizing it) before the flush
        delivered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        await channel.basic_consume(queue, lambda delivery: delivered.set_result(delivery.body), no_ack=True)
        async with asyncio.timeout(10):
            assert await delivered == b"a" * (3 * FRAME_PAYLOAD)
    finally:
        await connection.close()
