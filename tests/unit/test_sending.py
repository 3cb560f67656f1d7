"""event.sending: one confirm channel shared by every publish, reopened once, failures named (in memory)."""

from __future__ import annotations

import asyncio

import pytest

from event.driver import ChannelClosed, Connection
from event.errors import ConnectionFailed, Unroutable
from event.metrics import PublishStats
from event.sending import Sender, properties
from event.testing import TestBroker

URL = "amqp://nobody:nothing@127.0.0.1:1/"  # never dialled: the broker is in memory


class Source:
    """A connection source that counts how often the sender asked for a connection (one per channel)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.asked = 0

    async def __call__(self, deadline: float) -> Connection:
        self.asked += 1
        if self.connection.is_closed:
            raise ConnectionFailed("gone")
        return self.connection


async def broker_with_queue() -> tuple[TestBroker, Connection]:
    broker = TestBroker()
    connection = await broker.connect(URL, name="sender")
    channel = await connection.channel()
    await channel.queue_declare("q")
    await channel.close()
    return broker, connection


async def test_concurrent_publishes_share_one_channel_and_all_arrive() -> None:
    broker, connection = await broker_with_queue()
    source = Source(connection)
    stats = PublishStats()
    sender = Sender(source, stats=stats)
    await asyncio.gather(*(sender.send("", "q", str(n).encode(), properties()) for n in range(100)))
    assert source.asked == 1
    assert [m.body for m in broker.queues["q"].messages] == [str(n).encode() for n in range(100)]
    assert stats.published == {"": 100} and stats.resent == 0


async def test_a_channel_the_broker_closed_is_reopened_once_for_all_the_publishes_behind_it() -> None:
    broker, connection = await broker_with_queue()
    source = Source(connection)
    closed: list[BaseException] = []
    sender = Sender(source, on_closed=closed.append)
    await sender.send("", "q", b"before", properties())
    with pytest.raises(ConnectionFailed, match="no exchange 'missing'"):
        await sender.send("missing", "q", b"lost", properties())  # the broker closes the channel for it
    await asyncio.sleep(0)  # the channel's closing callbacks run
    assert len(closed) == 1 and isinstance(closed[0], ChannelClosed)
    await asyncio.gather(*(sender.send("", "q", b"after", properties()) for _ in range(10)))
    assert source.asked == 2  # the first channel, and one more for the ten
    assert [m.body for m in broker.queues["q"].messages] == [b"before"] + [b"after"] * 10


async def test_a_mandatory_publish_nobody_receives_is_unroutable_and_reported() -> None:
    _, connection = await broker_with_queue()
    returned: list[tuple[str, str]] = []
    sender = Sender(Source(connection), on_returned=lambda exchange, key: returned.append((exchange, key)))
    with pytest.raises(Unroutable, match="routing key 'nowhere'"):
        await sender.send("", "nowhere", b"x", properties(), mandatory=True)
    await sender.send("", "nowhere", b"x", properties())  # not mandatory: dropped, as RabbitMQ does
    assert returned == [("", "nowhere")]


async def test_without_a_resend_window_a_lost_connection_fails_the_publish_at_once() -> None:
    _, connection = await broker_with_queue()
    sender = Sender(Source(connection))
    await sender.send("", "q", b"x", properties())
    await connection.close()
    with pytest.raises(ConnectionFailed, match="gone"):
        await sender.send("", "q", b"y", properties())


async def test_within_the_resend_window_a_publish_goes_out_on_the_next_connection() -> None:
    broker, first = await broker_with_queue()
    second = await broker.connect(URL, name="again")
    connections = [first, second]
    stats = PublishStats()

    async def reconnecting(deadline: float) -> Connection:
        while connections[0].is_closed:
            connections.pop(0)
        return connections[0]

    sender = Sender(reconnecting, resend_within=5, stats=stats)
    await sender.send("", "q", b"one", properties())
    await first.close()
    await sender.send("", "q", b"two", properties())
    assert [m.body for m in broker.queues["q"].messages] == [b"one", b"two"]
    assert stats.resent == 0  # it found the channel closed before sending: nothing was sent twice
