"""event.sending: one confirm channel shared by every publish, reopened once, failures named (in memory)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from event import wire
from event.driver import ChannelClosed, Connection
from event.errors import ConfigurationError, ConnectionFailed, Unroutable
from event.metrics import PublishStats
from event.sending import Sender, new_message_id, properties
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


def test_message_ids_are_distinct_version_4_uuids_in_their_usual_text_form() -> None:
    ids = [new_message_id() for _ in range(2_000)]  # several batches of the generator
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
    assert properties().message_id != properties().message_id
    assert properties(message_id="mine").message_id == "mine"


def test_message_ids_drawn_from_threads_at_once_are_never_the_same() -> None:
    with ThreadPoolExecutor(8) as threads:
        batches = list(threads.map(lambda _: [new_message_id() for _ in range(1_000)], range(8)))
    drawn = [one for batch in batches for one in batch]
    assert len(set(drawn)) == len(drawn) == 8_000


FORKED = """
import os
from event.sending import new_message_id
new_message_id()  # the parent holds a batch not yet handed out
reader, writer = os.pipe()
pid = os.fork()
if pid == 0:  # the child: its next ids, to the parent
    os.write(writer, " ".join(new_message_id() for _ in range(10)).encode())
    os._exit(0)
os.close(writer)
os.waitpid(pid, 0)
with os.fdopen(reader) as pipe:
    child = set(pipe.read().split())
print(len(child), len(child & {new_message_id() for _ in range(10)}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_draws_ids_of_its_own() -> None:
    # In a fresh, single-threaded interpreter: forking this one (threads of other tests) is unsafe.
    done = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10", "0"]  # ten ids of its own, none of them the parent's next


def test_the_timestamp_is_the_whole_second_of_now_whichever_second_comes() -> None:
    for now in (1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.0, 1_699_999_999.5, 1_700_000_000.0):
        stamp = properties(now=now).timestamp
        assert stamp == datetime.fromtimestamp(int(now), tz=UTC), now
    assert properties(now=5.5).timestamp is properties(now=5.0).timestamp  # one per second, shared


def test_a_routing_key_found_good_is_still_checked_for_what_it_is_and_bad_ones_always_fail() -> None:
    assert wire.validate_routing_key("app.cached", pattern=False) == "app.cached"
    assert wire.validate_routing_key("app.cached", pattern=False) == "app.cached"
    with pytest.raises(ConfigurationError, match="wildcard"):
        wire.validate_routing_key("app.*", pattern=False)
    with pytest.raises(ConfigurationError, match="wildcard"):
        wire.validate_routing_key("app.*", pattern=False)  # not remembered as good
    assert wire.validate_routing_key("app.*", pattern=True) == "app.*"
    with pytest.raises(ConfigurationError, match="wildcard"):
        wire.validate_routing_key("app.*", pattern=False)  # good as a pattern is not good to publish to
    with pytest.raises(ConfigurationError, match="not a string"):
        wire.validate_routing_key(b"app.cached", pattern=False)  # type: ignore[arg-type]
    for n in range(wire.GOOD_KEYS_KEPT + 10):  # more keys than it keeps: bounded, and still right
        wire.validate_routing_key(f"app.k{n}", pattern=False)
    assert wire.validate_routing_key("app.k0", pattern=False) == "app.k0"
    with pytest.raises(ConfigurationError, match="empty word"):
        wire.validate_routing_key("app..k", pattern=False)
