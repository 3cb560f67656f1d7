"""event.amqp against a hostile or buggy broker: each case closes the connection with the protocol's
reply code (or is bounded), never hangs, never hands a handler what the frames do not describe.

Two kinds of peer: a connection fed bytes straight into ``data_received`` on a recording transport
(exact, synchronous: an exception there would escape to the test), and a loopback server of the
test's own where the socket matters (a frame trickling in, reading paused, FIN and RST mid-frame).
The fuzz test at the end feeds mutated frame streams to the receive path under a watchdog."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import struct
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pamqp.exceptions
import pamqp.frame
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat
from support import eventually, examples

from event import amqp, driver
from event.amqp import frames
from event.amqp.url import parse
from event.errors import ConnectionFailed


def marshal(frame: Any, channel: int = 0) -> bytes:
    return pamqp.frame.marshal(frame, channel)


def message(tag: int, body: bytes, *, ctag: str = "c", channel: int = 1, size: int | None = None) -> bytes:
    """A Basic.Deliver, its content header (``size``: the body size it declares) and one body frame."""
    return b"".join(
        [
            marshal(spec.Basic.Deliver(ctag, tag, False, "ex", "rk"), channel),
            marshal(ContentHeader(body_size=len(body) if size is None else size), channel),
            marshal(ContentBody(body), channel) if body else b"",
        ]
    )


class Recorder(asyncio.Transport):
    """A transport of the test's own: keeps every write, and whether reading is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True
        self.keep = True  # False: writes are dropped (a test that measures memory)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.keep:
            self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def frames(self) -> list[Any]:
        data = b"".join(self.writes)[8:]  # after the protocol header
        found = []
        while data:
            used, _, frame = pamqp.frame.unmarshal(data)
            found.append(frame)
            data = data[used:]
        return found

    def close_sent(self) -> int | None:
        """The reply code of the Connection.Close we sent, if we did."""
        closes = [f for f in self.frames() if isinstance(f, spec.Connection.Close)]
        return int(closes[-1].reply_code) if closes else None


def fresh(tune: spec.Connection.Tune | None = None) -> tuple[Any, Recorder]:
    """A connection fed the broker's Start and ``tune`` (if any), on a recorder."""
    loop = asyncio.get_running_loop()
    connection = amqp.AMQPConnection(parse("amqp://u:p@h/"), name="t", node="t", loop=loop)
    transport = Recorder()
    connection.connection_made(transport)
    connection.data_received(marshal(spec.Connection.Start(mechanisms="PLAIN")))
    if tune is not None:
        connection.data_received(marshal(tune))
    return connection, transport


async def opened(
    *, confirms: bool = False, frame_max: int = 131072, prefetch: int | None = None
) -> tuple[Any, Recorder, Any]:
    """A connection through the handshake with channel 1 open (and a consumer "c" if ``prefetch`` is
    given: basic.qos of that prefetch, then basic.consume)."""
    connection, transport = fresh(spec.Connection.Tune(0, frame_max, 0))
    connection.data_received(marshal(spec.Connection.OpenOk()))
    opening = asyncio.create_task(connection.channel(confirms=confirms))
    await asyncio.sleep(0)
    connection.data_received(marshal(spec.Channel.OpenOk(), 1))
    if confirms:
        await asyncio.sleep(0)
        connection.data_received(marshal(spec.Confirm.SelectOk(), 1))
    channel = await opening
    channel.got = []
    if prefetch is not None:
        qos = asyncio.create_task(channel.basic_qos(prefetch))
        await asyncio.sleep(0)
        connection.data_received(marshal(spec.Basic.QosOk(), 1))
        await qos
        consume = asyncio.create_task(channel.basic_consume("q", channel.got.append, consumer_tag="c"))
        await asyncio.sleep(0)
        connection.data_received(marshal(spec.Basic.ConsumeOk("c"), 1))
        await consume
    return connection, transport, channel


async def closed_with(connection: Any, code: int) -> driver.ConnectionClosed:
    """The connection's end, which must be a ConnectionClosed of ``code``."""
    with pytest.raises(driver.ConnectionClosed) as closed:
        await asyncio.wait_for(asyncio.shield(connection.closing), 5)
    assert closed.value.reply_code == code, closed.value
    return closed.value


async def publishes(channel: Any, n: int, **options: Any) -> list[asyncio.Task[None]]:
    tasks = [
        asyncio.create_task(channel.basic_publish(b"%d" % i, routing_key="q", **options)) for i in range(n)
    ]
    await asyncio.sleep(0)
    return tasks


# --- publisher confirms -------------------------------------------------------------------------------


@pytest.mark.timeout(20)  # today's code walks every tag up to 2^63: it would never return
@pytest.mark.parametrize("tag", [10**7, 2**63, 2**64 - 1])
async def test_a_confirm_of_a_tag_far_beyond_those_published_closes_at_once_with_503(tag: int) -> None:
    connection, transport, channel = await opened(confirms=True)
    pending = await publishes(channel, 3)
    started = time.perf_counter()
    connection.data_received(frames.encode_ack(1, tag, True))  # pamqp writes no tag above 2^63 - 1
    assert time.perf_counter() - started < 0.5  # O(published), not O(tag): today 10^7 takes 1.4-3 s
    closed = await closed_with(connection, 503)
    assert "COMMAND_INVALID" in str(closed) and str(tag) in str(closed)
    assert transport.close_sent() == 503 and transport.closed
    for publish in pending:
        with pytest.raises(driver.ConnectionClosed, match="COMMAND_INVALID"):
            await publish


async def test_an_ack_multiple_beyond_the_published_fails_rather_than_losing_later_confirms() -> None:
    """Today Ack(1000, multiple) with 3 published moves the mark past 1000: publish 4 never confirms."""
    connection, _transport, channel = await opened(confirms=True)
    first = await publishes(channel, 3)
    connection.data_received(marshal(spec.Basic.Ack(1000, multiple=True), 1))
    await closed_with(connection, 503)
    assert all(isinstance(p.exception(), driver.ConnectionClosed) for p in first if p.done())
    await asyncio.gather(*first, return_exceptions=True)


async def test_a_single_confirm_of_a_tag_never_published_and_an_ack_on_a_plain_channel_close() -> None:
    connection, _, channel = await opened(confirms=True)
    await publishes(channel, 2)
    connection.data_received(marshal(spec.Basic.Nack(3), 1))
    await closed_with(connection, 503)
    connection, _, _ = await opened(confirms=False)
    connection.data_received(marshal(spec.Basic.Ack(1), 1))
    await closed_with(connection, 503)


async def test_confirms_in_any_legal_order_still_settle_every_publish() -> None:
    """The O(pending) walk keeps today's meaning: multiple up to a tag, single, repeats ignored."""
    connection, _, channel = await opened(confirms=True)
    pending = await publishes(channel, 6)
    for frame in (spec.Basic.Ack(2), spec.Basic.Ack(3, multiple=True), spec.Basic.Ack(3)):
        connection.data_received(marshal(frame, 1))
    connection.data_received(marshal(spec.Basic.Nack(5), 1))
    connection.data_received(marshal(spec.Basic.Ack(0, multiple=True), 1))  # the spec's "all outstanding"
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert results[:4] == [None] * 4 and isinstance(results[4], driver.Nacked) and results[5] is None
    assert not connection.is_closed


# --- frame_max ----------------------------------------------------------------------------------------


async def test_a_body_frame_larger_than_frame_max_is_a_frame_error_and_not_delivered() -> None:
    connection, transport, channel = await opened(frame_max=4096, prefetch=10)
    connection.data_received(message(1, b"x" * 100_000))
    await closed_with(connection, 501)
    assert channel.got == [] and transport.close_sent() == 501


async def test_a_frame_header_announcing_4_gib_is_refused_before_its_payload_arrives() -> None:
    connection, _transport, _ = await opened()
    connection.data_received(struct.pack(">BHI", 3, 1, 2**32 - 1))  # the header alone
    closed = await closed_with(connection, 501)
    assert "frame_max 131072" in str(closed)
    assert connection.buffered == 0


async def test_a_trickling_4_gib_frame_over_a_socket_ends_the_connection_at_its_header() -> None:
    async with Peer() as peer:
        connection = await peer.connect()
        peer.write(struct.pack(">BHI", 1, 0, 2**32 - 1))
        await closed_with(connection, 501)
        for _ in range(50):  # what would have been buffered: the client no longer reads it
            peer.write(b"\0" * 65536)
        await asyncio.sleep(0.1)
        assert connection.buffered == 0
        await eventually(lambda: peer.close_code() == 501, timeout=5)


@pytest.mark.parametrize("frame_max", [8, 5, 4095])
async def test_a_frame_max_below_4096_at_tune_is_refused(frame_max: int) -> None:
    connection, transport = fresh(spec.Connection.Tune(0, frame_max, 0))
    with pytest.raises(driver.ConnectionClosed, match=f"frame_max {frame_max} is below") as refused:
        await asyncio.wait_for(connection.opened, 5)
    assert refused.value.reply_code == 530
    sent = transport.frames()
    assert [type(f) for f in sent] == [spec.Connection.StartOk, spec.Connection.Close]  # no TuneOk
    assert transport.closed


async def test_a_frame_max_below_4096_fails_the_connect_with_words_that_say_so() -> None:
    async with Peer(frame_max=8) as peer:
        with pytest.raises(ConnectionFailed, match="frame_max 8 is below the protocol's minimum of 4096"):
            await amqp.open_connection(peer.url, name="t", timeout=5)


async def test_frame_max_0_from_the_broker_means_our_cap() -> None:
    connection, transport = fresh(spec.Connection.Tune(0, 0, 0))
    assert connection.frame_max == 131072
    await asyncio.sleep(0)
    assert transport.frames()[1].frame_max == 131072


# --- content that does not add up ---------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [1, 2])
async def test_a_body_longer_than_its_header_declares_is_a_frame_error(pieces: int) -> None:
    connection, _, channel = await opened(prefetch=10)
    body = b"y" * 50
    raw = marshal(spec.Basic.Deliver("c", 1, False, "ex", "rk"), 1) + marshal(ContentHeader(body_size=5), 1)
    if pieces == 1:
        raw += marshal(ContentBody(body), 1)
    else:
        raw += marshal(ContentBody(body[:3]), 1) + marshal(ContentBody(body[3:]), 1)
    connection.data_received(raw)
    closed = await closed_with(connection, 501)
    assert "where the content header said 5" in str(closed)
    assert channel.got == []


async def test_a_deliver_where_a_body_was_due_is_an_unexpected_frame() -> None:
    connection, transport, channel = await opened(prefetch=10)
    raw = marshal(spec.Basic.Deliver("c", 1, False, "ex", "rk"), 1)
    raw += marshal(ContentHeader(body_size=10, properties=spec.Basic.Properties(app_id="first")), 1)
    raw += message(2, b"0123456789")  # its own header, then a body of the first one's size
    connection.data_received(raw)
    await closed_with(connection, 505)
    assert channel.got == [] and transport.close_sent() == 505


async def test_content_with_no_method_before_it_is_an_unexpected_frame() -> None:
    connection, _, _ = await opened(prefetch=10)
    connection.data_received(marshal(ContentHeader(body_size=1), 1))
    await closed_with(connection, 505)
    connection, _, _ = await opened(prefetch=10)
    connection.data_received(marshal(ContentBody(b"x"), 1))
    await closed_with(connection, 505)


async def test_a_delivery_tag_that_does_not_go_up_is_refused() -> None:
    connection, _, channel = await opened(prefetch=10)
    connection.data_received(message(5, b"a") + message(5, b"b"))
    await closed_with(connection, 503)
    assert [d.body for d in channel.got] == [b"a"]


async def test_a_no_ack_consumer_takes_repeated_tags_as_direct_reply_to_sends_them() -> None:
    """RabbitMQ hands the no_ack consumer of amq.rabbitmq.reply-to every reply under one delivery tag
    (seen on 3.10): only a delivery that will be acked is held to tags that go up."""
    connection, _, channel = await opened()
    consume = asyncio.create_task(channel.basic_consume("amq.rabbitmq.reply-to", channel.got.append,
                                                        consumer_tag="r", no_ack=True))  # fmt: skip
    await asyncio.sleep(0)
    connection.data_received(marshal(spec.Basic.ConsumeOk("r"), 1))
    await consume
    connection.data_received(message(2, b"a", ctag="r") + message(2, b"b", ctag="r"))
    await asyncio.sleep(0)
    assert [d.body for d in channel.got] == [b"a", b"b"] and not connection.is_closed


def nested_table(depth: int) -> bytes:
    table = b"\x00\x00\x00\x00"
    for _ in range(depth):
        entry = b"\x01kF" + table
        table = struct.pack(">I", len(entry)) + entry
    return table


async def test_a_header_table_nested_5000_deep_is_a_frame_error_not_a_recursion_error() -> None:
    connection, _, channel = await opened(prefetch=10)
    headers = struct.pack(">HHQH", 60, 0, 1, spec.Basic.Properties.flags["headers"]) + nested_table(5000)
    raw = marshal(spec.Basic.Deliver("c", 1, False, "ex", "rk"), 1)
    raw += struct.pack(">BHI", 2, 1, len(headers)) + headers + b"\xce" + marshal(ContentBody(b"x"), 1)
    connection.data_received(raw)  # raises nothing
    closed = await closed_with(connection, 501)
    assert "nested deeper than 32" in str(closed)
    assert channel.got == []


async def test_a_connection_start_nested_5000_deep_fails_the_handshake_with_501() -> None:
    loop = asyncio.get_running_loop()
    connection = amqp.AMQPConnection(parse("amqp://u:p@h/"), name="t", node="t", loop=loop)
    connection.connection_made(Recorder())
    start = bytearray(marshal(spec.Connection.Start(mechanisms="PLAIN", server_properties={"k": {}})))
    inner = nested_table(5000)[4:]  # the body of a table: "k" -> a table 5000 deep
    props = struct.pack(">I", len(inner)) + inner
    payload = bytes(start[7:13]) + props + bytes(start[7 + 6 + 4 + 7 : -1])  # ids, version, new props, rest
    connection.data_received(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
    with pytest.raises(driver.ConnectionClosed) as closed:
        await asyncio.wait_for(connection.opened, 5)
    assert closed.value.reply_code == 501


async def test_a_header_with_too_many_fields_is_a_frame_error() -> None:
    connection, _, _ = await opened(prefetch=10)
    voids = b"V" * 20_000  # 20 KB, within frame_max: an array of 20,000 values
    entries = b"\x01kA" + struct.pack(">I", len(voids)) + voids
    table = struct.pack(">I", len(entries)) + entries
    header = struct.pack(">HHQH", 60, 0, 0, spec.Basic.Properties.flags["headers"]) + table
    raw = marshal(spec.Basic.Deliver("c", 1, False, "ex", "rk"), 1)
    connection.data_received(raw + struct.pack(">BHI", 2, 1, len(header)) + header + b"\xce")
    assert "of more than 16384 values" in str(await closed_with(connection, 501))


# --- memory that must come back -----------------------------------------------------------------------


@contextmanager
def traced() -> Iterator[list[int]]:
    """The memory allocated inside the block and still held at its end (in bytes), once it ends."""
    held: list[int] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield held
        gc.collect()  # an exception and the frames of its traceback hold one another
        held.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()


async def test_publishes_that_time_out_are_forgotten_with_their_bodies() -> None:
    connection, transport, channel = await opened(confirms=True)
    transport.keep = False
    with traced() as held:
        tasks = [
            asyncio.create_task(
                channel.basic_publish(bytes(10_000), routing_key="q", mandatory=True, timeout=0.05)
            )
            for _ in range(1000)
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results)
        del tasks, results
        await asyncio.sleep(0)  # out of the loop step that held the gather's results
    assert held[0] < 2_000_000  # today: the 1,000 bodies of 10 KB stay, 10 MB
    connection.data_received(marshal(spec.Basic.Ack(1000, multiple=True), 1))  # late: nothing waits
    assert not connection.is_closed


async def test_a_cancelled_publish_is_forgotten() -> None:
    _, transport, channel = await opened(confirms=True)
    transport.keep = False
    with traced() as held:
        tasks = [
            asyncio.create_task(channel.basic_publish(bytes(10_000), mandatory=True)) for _ in range(500)
        ]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        del tasks
        await asyncio.sleep(0)  # out of the loop step that held the gather's results
    assert held[0] < 1_000_000


async def test_returns_that_no_confirm_follows_do_not_accumulate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="event.amqp")  # the 500 warnings kept by pytest are not ours
    connection, _, channel = await opened(confirms=True)
    pending = await publishes(channel, 1, mandatory=True)
    with traced() as held:
        for n in range(500):  # returns of messages never published, and of the one pending, repeated
            body = bytes(10_000) if n % 2 else b"0"
            raw = marshal(spec.Basic.Return(312, "NO_ROUTE", "", "q"), 1)
            raw += marshal(ContentHeader(body_size=len(body)), 1) + marshal(ContentBody(body), 1)
            connection.data_received(raw)
    assert held[0] < 1_000_000  # today: 250 bodies of 10 KB and 250 returns kept, 2.5 MB
    connection.data_received(marshal(spec.Basic.Ack(1), 1))
    with pytest.raises(driver.Returned):  # the one that could be claimed still is
        await pending[0]


# --- read back-pressure -------------------------------------------------------------------------------


async def test_reading_pauses_while_deliveries_in_hand_exceed_the_prefetch_and_resumes_when_they_drain() -> (
    None
):
    connection, transport, channel = await opened(prefetch=10)  # pauses past 2 x 10 + 64 = 84 in hand
    connection.data_received(b"".join(message(tag, b"m") for tag in range(1, 85)))
    assert transport.reading and len(channel.got) == 84
    connection.data_received(message(85, b"m"))
    assert not transport.reading
    channel.basic_ack(60, multiple=True)  # 25 left in hand: still above the prefetch
    assert not transport.reading
    channel.basic_reject(61)
    channel.basic_nack(70, multiple=True)  # 15 left
    assert not transport.reading
    for tag in range(71, 76):
        channel.basic_ack(tag)
    assert transport.reading  # 10 in hand: the prefetch
    channel.basic_ack(0, multiple=True)
    connection.data_received(b"".join(message(tag, b"m") for tag in range(86, 200)))
    assert not transport.reading
    connection.data_received(marshal(spec.Channel.Close(406, "PRECONDITION_FAILED - x", 0, 0), 1))
    assert transport.reading  # a channel that ends holds nothing back


async def test_a_held_connection_still_reads_now_and_then_while_a_confirm_is_awaited() -> None:
    """A handler that publishes a copy and awaits its confirm before it acks (event's retries do) must
    not wait for ever on a confirm we stopped reading: one read is let in every HOLD_PROBE seconds."""
    connection, transport, consuming = await opened(prefetch=10)
    opening = asyncio.create_task(connection.channel(confirms=True))
    await asyncio.sleep(0)
    connection.data_received(marshal(spec.Channel.OpenOk(), 2))
    await asyncio.sleep(0)
    connection.data_received(marshal(spec.Confirm.SelectOk(), 2))
    publishing = await opening
    connection.data_received(b"".join(message(tag, b"m") for tag in range(1, 86)))
    assert not transport.reading
    await asyncio.sleep(0.4)
    assert not transport.reading  # nothing awaited from the broker: the hold is strict
    copy = asyncio.create_task(publishing.basic_publish(b"retry copy", routing_key="q"))
    await eventually(lambda: transport.reading, timeout=2)  # a probe lets one read in
    connection.data_received(message(86, b"m") + marshal(spec.Basic.Ack(1), 2))
    assert await asyncio.wait_for(copy, 1) is None
    assert not transport.reading  # held again after that read
    assert len(consuming.got) == 86 and not connection.is_closed


async def test_prefetch_0_and_no_ack_consumers_never_pause_reading() -> None:
    connection, transport, channel = await opened(prefetch=0)
    connection.data_received(b"".join(message(tag, b"m") for tag in range(1, 1001)))
    assert transport.reading and len(channel.got) == 1000
    connection, transport, channel = await opened()
    consume = asyncio.create_task(
        channel.basic_consume("q", channel.got.append, consumer_tag="n", no_ack=True)
    )
    await asyncio.sleep(0)
    connection.data_received(marshal(spec.Basic.ConsumeOk("n"), 1))
    await consume
    connection.data_received(b"".join(message(tag, b"m", ctag="n") for tag in range(1, 1001)))
    assert transport.reading and len(channel.got) == 1000


async def test_a_peer_ignoring_qos_is_held_back_over_a_socket_without_being_taken_for_dead() -> None:
    """200,000 deliveries today queue in the process; now reading stops near 2 x prefetch + 64, for
    longer than two heartbeat intervals without the missed-heartbeat detector ending the connection,
    and every delivery arrives as they are acked."""
    async with Peer(heartbeat=1) as peer:
        connection = await peer.connect()
        channel = await connection.channel()
        got: list[driver.Delivery] = []
        qos = asyncio.create_task(channel.basic_qos(10))
        await eventually(lambda: len(peer.sent(spec.Basic.Qos)) == 1, timeout=5)
        peer.send(spec.Basic.QosOk(), 1)
        await qos
        consume = asyncio.create_task(channel.basic_consume("q", got.append, consumer_tag="c"))
        await eventually(lambda: len(peer.sent(spec.Basic.Consume)) == 1, timeout=5)
        peer.send(spec.Basic.ConsumeOk("c"), 1)
        await consume
        total = 3000
        flood = asyncio.create_task(
            peer.flood(b"".join(message(t, bytes(2000)) for t in range(1, total + 1)))
        )
        await asyncio.sleep(3.0)  # three heartbeat intervals, reading paused all along
        assert not connection.is_closed
        assert 84 < len(got) < 84 + 300, len(got)  # one read's worth (256 KiB) past the threshold at most
        while len(got) < total:
            channel.basic_ack(got[-1].delivery_tag, multiple=True)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(flood, 5)
        assert [d.delivery_tag for d in got] == list(range(1, total + 1))
        await connection.close()


# --- channels, consumers, the handshake ---------------------------------------------------------------


async def test_a_frame_for_a_channel_that_is_not_open_is_a_channel_error() -> None:
    connection, transport, _ = await opened(prefetch=10)
    connection.data_received(message(1, b"x", channel=7))
    await closed_with(connection, 504)
    assert transport.close_sent() == 504


async def test_late_frames_of_a_channel_whose_close_crossed_the_broker_s_are_dropped_until_its_close_ok() -> (
    None
):
    connection, _, channel = await opened(prefetch=10)
    closing = asyncio.create_task(channel.close())
    await asyncio.sleep(0)
    connection.data_received(marshal(spec.Channel.Close(406, "PRECONDITION_FAILED - x", 0, 0), 1))
    await asyncio.wait_for(closing, 5)
    connection.data_received(message(1, b"late") + marshal(spec.Channel.CloseOk(), 1))  # the answer to ours
    assert not connection.is_closed and channel.got == []
    connection.data_received(message(2, b"later"))  # after its CloseOk: the channel is not open
    await closed_with(connection, 504)


async def test_a_delivery_for_an_unknown_consumer_is_rejected_with_requeue() -> None:
    connection, transport, channel = await opened(prefetch=10)
    connection.data_received(message(1, b"x", ctag="nobody"))
    await asyncio.sleep(0)
    rejects = [f for f in transport.frames() if isinstance(f, spec.Basic.Reject)]
    assert [(r.delivery_tag, r.requeue) for r in rejects] == [(1, True)]
    assert channel.got == [] and not connection.is_closed


async def test_a_second_connection_start_once_open_is_refused_without_sending_the_credentials_again() -> None:
    connection, transport, _ = await opened()
    connection.data_received(marshal(spec.Connection.Start(mechanisms="PLAIN")))
    await closed_with(connection, 503)
    await asyncio.sleep(0)
    assert len([f for f in transport.frames() if isinstance(f, spec.Connection.StartOk)]) == 1


async def test_a_get_ok_nobody_asked_for_and_an_unasked_reply_are_refused() -> None:
    connection, _, _ = await opened()
    connection.data_received(marshal(spec.Basic.GetOk(1, False, "", "q", 0), 1))
    await closed_with(connection, 503)
    connection, _, _ = await opened()
    connection.data_received(marshal(spec.Queue.DeclareOk("q", 0, 0), 1))
    await closed_with(connection, 503)


# --- what was handled well stays so -------------------------------------------------------------------


async def test_a_channel_closed_mid_burst_settles_the_confirmed_and_fails_the_rest_with_its_code() -> None:
    connection, _, channel = await opened(confirms=True)
    pending = await publishes(channel, 2000)
    connection.data_received(marshal(spec.Basic.Ack(500, multiple=True), 1))
    connection.data_received(marshal(spec.Channel.Close(406, "PRECONDITION_FAILED - x", 60, 40), 1))
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert results[:500] == [None] * 500
    assert all(isinstance(r, driver.PreconditionFailed) for r in results[500:])
    assert not connection.is_closed


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_peer_hanging_up_mid_frame_fails_what_is_pending(how: str) -> None:
    async with Peer() as peer:
        connection = await peer.connect()
        channel = await connection.channel(confirms=True)
        publish = asyncio.create_task(channel.basic_publish(b"x", routing_key="q"))
        await eventually(lambda: len(peer.sent(spec.Basic.Publish)) == 1, timeout=5)
        peer.write(marshal(spec.Basic.Ack(1), 1)[:5])
        await asyncio.sleep(0.05)
        peer.hang_up(reset=how == "rst")
        with pytest.raises(driver.ConnectionClosed):
            await asyncio.wait_for(publish, 5)
        assert connection.is_closed


# --- a loopback peer ----------------------------------------------------------------------------------


class Peer:
    """The broker's side over loopback: the handshake, Channel.Open and Confirm.Select answered, raw
    bytes on demand, and what the client sent recorded."""

    def __init__(self, *, heartbeat: int = 0, frame_max: int = 131072) -> None:
        self.heartbeat = heartbeat
        self.frame_max = frame_max
        self.received: list[tuple[int, Any]] = []
        self.writer: asyncio.StreamWriter | None = None
        self.url = ""
        self._server: asyncio.Server | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Peer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"amqp://guest:guest@127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.writer is not None:
            self.writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def connect(self) -> Any:
        return await amqp.open_connection(self.url, name="hostile", timeout=5)

    def write(self, data: bytes) -> None:
        assert self.writer is not None
        if not self.writer.is_closing():
            self.writer.write(data)

    def send(self, frame: Any, channel: int = 0) -> None:
        self.write(marshal(frame, channel))

    async def flood(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()  # waits while the client does not read

    def hang_up(self, *, reset: bool) -> None:
        assert self.writer is not None
        if reset:
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if reset:
            self.writer.transport.abort()
        else:
            self.writer.close()

    def sent(self, kind: type) -> list[Any]:
        return [frame for _, frame in self.received if isinstance(frame, kind)]

    def close_code(self) -> int | None:
        closes = self.sent(spec.Connection.Close)
        return int(closes[-1].reply_code) if closes else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        await reader.readexactly(8)
        self.send(spec.Connection.Start(server_properties={"product": "hostile"}, mechanisms="PLAIN"))
        buf = b""
        replies: dict[type, Any] = {
            spec.Connection.StartOk: lambda: spec.Connection.Tune(2047, self.frame_max, self.heartbeat),
            spec.Connection.Open: spec.Connection.OpenOk,
            spec.Connection.Close: spec.Connection.CloseOk,
            spec.Channel.Open: spec.Channel.OpenOk,
            spec.Channel.Close: spec.Channel.CloseOk,
            spec.Confirm.Select: spec.Confirm.SelectOk,
        }
        try:
            while data := await reader.read(65536):
                buf += data
                while buf:
                    try:
                        used, channel, frame = pamqp.frame.unmarshal(buf)
                    except pamqp.exceptions.UnmarshalingException:
                        break
                    buf = buf[used:]
                    self.received.append((channel, frame))
                    reply = replies.get(type(frame))
                    if reply is not None:
                        self.send(reply(), channel)
        except ConnectionError:
            pass


# --- fuzz ---------------------------------------------------------------------------------------------


class Watchdog(BaseException):
    """Raised by the alarm: a BaseException, so that no ``except Exception`` of the code swallows it."""


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    def bark(*_: object) -> None:
        raise Watchdog(f"the receive path took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, bark)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _frame_strategy() -> st.SearchStrategy[bytes]:
    tags = st.one_of(st.integers(0, 12), st.just(2**63), st.integers(0, 2**64 - 1))
    small_tags = st.integers(0, 2**63 - 1)  # pamqp's range
    channels = st.sampled_from([1, 1, 1, 1, 0, 2])
    bodies = st.binary(max_size=64)
    methods = st.one_of(
        st.builds(
            lambda t, ch: marshal(spec.Basic.Deliver("c", t, False, "ex", "rk"), ch), small_tags, channels
        ),
        st.builds(frames.encode_ack, channels, tags, st.booleans()),
        st.builds(frames.encode_nack, channels, tags, st.booleans(), st.booleans()),
        st.builds(lambda ch: marshal(spec.Basic.Return(312, "NO_ROUTE", "", "q"), ch), channels),
        st.builds(lambda n, ch: marshal(ContentHeader(body_size=n), ch), st.integers(0, 80), channels),
        st.builds(lambda b, ch: marshal(ContentBody(b), ch), bodies, channels),
        st.builds(lambda t, b: message(t, b), small_tags, bodies),
        st.just(marshal(Heartbeat())),
        st.just(marshal(spec.Connection.Blocked("x"))),
        st.just(marshal(spec.Channel.Flow(active=False), 1)),
        st.just(marshal(spec.Basic.Cancel("c"), 1)),
        st.just(marshal(spec.Channel.Close(406, "x", 0, 0), 1)),
        st.just(marshal(spec.Connection.Start(mechanisms="PLAIN"))),
        st.builds(lambda d: struct.pack(">BHI", 1, 1, 2**32 - 1) + d, st.binary(max_size=8)),
        st.binary(min_size=1, max_size=40),
    )
    return methods


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    raw = bytearray(data)
    for at, value in flips:
        if raw:
            raw[at % len(raw)] = value
    return bytes(raw[:cut] if cut is not None else raw)


@settings(
    max_examples=examples(6000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    stream=st.lists(_frame_strategy(), min_size=1, max_size=30),
    flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=3),
    cut=st.none() | st.integers(0, 2000),
    chunk=st.integers(1, 300),
    confirms=st.booleans(),
    handshake=st.booleans(),
)
def test_fuzz_the_receive_path(
    stream: list[bytes],
    flips: list[tuple[int, int]],
    cut: int | None,
    chunk: int,
    confirms: bool,
    handshake: bool,
) -> None:
    """Arbitrary and mutated frames, split anywhere, from the handshake on or once a channel is open:
    no exception escapes, no hang, the buffer stays within one frame, and the connection is either
    open and consistent or closed with a reply code."""
    if handshake:  # the broker's side of the handshake, mutated with the rest
        stream = [HANDSHAKE, *stream]
    asyncio.run(_fuzz_one(_mutate(b"".join(stream), flips, cut), chunk, confirms, handshake))


HANDSHAKE = b"".join(
    marshal(frame)
    for frame in (
        spec.Connection.Start(
            server_properties={"product": "fuzz", "nested": {"a": [1, "b"]}}, mechanisms="PLAIN"
        ),
        spec.Connection.Tune(2047, 4096, 0),
        spec.Connection.OpenOk(),
    )
)


async def _fuzz_one(data: bytes, chunk: int, confirms: bool, handshake: bool) -> None:
    if handshake:
        loop = asyncio.get_running_loop()
        connection = amqp.AMQPConnection(parse("amqp://u:p@h/"), name="t", node="t", loop=loop)
        transport = Recorder()
        connection.connection_made(transport)
        channel: Any = type("NoChannel", (), {"got": []})()
        pending: list[asyncio.Task[None]] = []
    else:
        connection, transport, channel = await opened(confirms=confirms, prefetch=2)
        pending = await publishes(channel, 5, mandatory=True) if confirms else []
    for at in range(0, len(data), chunk):
        with watchdog(2.0):
            connection.data_received(data[at : at + chunk])  # raises nothing
        assert connection.buffered <= connection.payload_max + 8 + chunk
        if connection.is_closed:
            break
    tags = [d.delivery_tag for d in channel.got]
    assert tags == sorted(set(tags))  # each delivery once, in tag order
    assert all(isinstance(d.body, bytes) for d in channel.got)
    if connection.is_closed:
        exc = connection.closing.exception()
        assert isinstance(exc, driver.ConnectionClosed)
        assert exc.reply_code != 541, exc  # a fault of ours, not the peer's
        if exc.reply_code in (501, 502, 503, 504, 505, 530):
            assert transport.close_sent() == exc.reply_code
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 1)
        assert all(r is None or isinstance(r, driver.AMQPError) for r in results), results  # none hangs
    else:
        await asyncio.sleep(0)
        for p in pending:
            p.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
