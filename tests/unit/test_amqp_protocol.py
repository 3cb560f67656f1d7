"""event.amqp's protocol against a scripted peer: what a shared broker cannot be made to do on demand.

A loopback TCP server of the test's own plays the broker's side of the handshake with frames encoded
by pamqp, then sends what each test needs (Connection.Blocked, Channel.Flow, silence instead of
heartbeats, acks and returns in a chosen order) and records what the client sends. It tests our client
over a real socket; it does not stand in for RabbitMQ's behaviour in any other test."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pamqp.exceptions
import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat
from support import eventually

from event import amqp, driver
from event.amqp.url import parse


class ScriptedPeer:
    """The broker's side of a connection: the handshake and the answers to opening channels, the rest
    up to the test."""

    def __init__(self, *, heartbeat: int = 0, frame_max: int = 131072) -> None:
        self.heartbeat = heartbeat
        self.frame_max = frame_max
        self.received: list[tuple[int, Any]] = []
        self.writer: asyncio.StreamWriter | None = None
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def send(self, frame: Any, channel: int = 0) -> None:
        assert self.writer is not None
        self.writer.write(pamqp.frame.marshal(frame, channel))

    def sent(self, kind: type) -> list[tuple[int, Any]]:
        """What the client sent of ``kind``, with its channel numbers."""
        return [(ch, frame) for ch, frame in self.received if isinstance(frame, kind)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        await reader.readexactly(8)  # the protocol header
        self.send(spec.Connection.Start(server_properties={"product": "scripted"}, mechanisms="PLAIN"))
        buf = b""
        while data := await reader.read(65536):
            buf += data
            while buf:
                try:
                    used, channel, frame = pamqp.frame.unmarshal(buf)
                except pamqp.exceptions.UnmarshalingException:
                    break  # the rest of the frame is still on its way
                buf = buf[used:]
                self.received.append((channel, frame))
                self._answer(channel, frame)

    def _answer(self, channel: int, frame: Any) -> None:
        replies = {
            spec.Connection.StartOk: lambda: spec.Connection.Tune(2047, self.frame_max, self.heartbeat),
            spec.Connection.Open: spec.Connection.OpenOk,
            spec.Connection.Close: spec.Connection.CloseOk,
            spec.Channel.Open: spec.Channel.OpenOk,
            spec.Channel.Close: spec.Channel.CloseOk,
            spec.Confirm.Select: spec.Confirm.SelectOk,
            spec.Basic.Qos: spec.Basic.QosOk,
        }
        reply = replies.get(type(frame))
        if reply is not None:
            self.send(reply(), channel)


@pytest.fixture
async def peer() -> AsyncIterator[ScriptedPeer]:
    scripted = ScriptedPeer()
    await scripted.start()
    yield scripted
    await scripted.close()


async def connect(url: str) -> Any:
    return await amqp.open_connection(url, name="scripted", timeout=5)


async def test_publishes_wait_while_the_broker_blocks_the_connection(peer: ScriptedPeer) -> None:
    connection = await connect(peer.url)
    channel = await connection.channel()
    peer.send(spec.Connection.Blocked(reason="low on memory"))
    await eventually(lambda: connection.blocked == "low on memory", timeout=5)
    publish = asyncio.create_task(channel.basic_publish(b"held", routing_key="q"))
    await asyncio.sleep(0.3)
    assert not publish.done()
    assert peer.sent(spec.Basic.Publish) == []  # nothing written while blocked
    peer.send(spec.Connection.Unblocked())
    await asyncio.wait_for(publish, 5)
    assert connection.blocked is None
    await eventually(lambda: len(peer.sent(spec.Basic.Publish)) == 1, timeout=5)
    assert peer.sent(ContentBody)[0][1].value == b"held"
    await connection.close()


async def test_a_publish_held_by_a_block_fails_as_in_flight_ones_do_when_the_connection_goes(
    peer: ScriptedPeer,
) -> None:
    connection = await connect(peer.url)
    channel = await connection.channel(confirms=True)
    in_flight = asyncio.create_task(channel.basic_publish(b"sent", routing_key="q"))
    await eventually(lambda: len(peer.sent(spec.Basic.Publish)) == 1, timeout=5)
    peer.send(spec.Connection.Blocked(reason="disk"))
    await eventually(lambda: connection.blocked == "disk", timeout=5)
    held = asyncio.create_task(channel.basic_publish(b"held", routing_key="q"))
    await asyncio.sleep(0.1)
    peer.send(spec.Connection.Close(320, "CONNECTION_FORCED - broker going down", 0, 0))
    for publish in (in_flight, held):
        with pytest.raises(driver.ConnectionClosed, match="CONNECTION_FORCED"):
            await asyncio.wait_for(publish, 5)
    assert len(peer.sent(spec.Basic.Publish)) == 1
    with pytest.raises(driver.ChannelInvalidState):  # a publish begun after the close
        await channel.basic_publish(b"late", routing_key="q")


async def test_a_publish_timeout_counts_the_block_and_the_confirm_and_a_late_ack_is_dropped(
    peer: ScriptedPeer,
) -> None:
    connection = await connect(peer.url)
    channel = await connection.channel(confirms=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):  # never confirmed: it fails after about its timeout
        await asyncio.wait_for(channel.basic_publish(b"unanswered", routing_key="q", timeout=0.3), 5)
    assert 0.25 <= loop.time() - started < 1.0
    peer.send(spec.Connection.Blocked(reason="low on memory"))
    await eventually(lambda: connection.blocked == "low on memory", timeout=5)
    started = loop.time()
    with pytest.raises(TimeoutError):  # held by the block all along: nothing sent, the same timeout
        await asyncio.wait_for(channel.basic_publish(b"blocked", routing_key="q", timeout=0.3), 5)
    assert 0.25 <= loop.time() - started < 1.0
    assert len(peer.sent(spec.Basic.Publish)) == 1
    held = asyncio.create_task(channel.basic_publish(b"half", routing_key="q", timeout=0.6))
    await asyncio.sleep(0.3)
    started = loop.time()
    peer.send(spec.Connection.Unblocked())  # half its timeout spent blocked: the rest for its confirm
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(held, 5)
    assert 0.2 <= loop.time() - started < 0.6
    confirmed = asyncio.create_task(channel.basic_publish(b"acked", routing_key="q", timeout=5))
    await eventually(lambda: len(peer.sent(spec.Basic.Publish)) == 3, timeout=5)
    peer.send(spec.Basic.Ack(delivery_tag=3, multiple=True), channel.number)  # late for 1 and 2
    assert await asyncio.wait_for(confirmed, 5) is None
    assert not channel.is_closed
    await connection.close()


async def test_channel_flow_off_holds_that_channel_s_publishes_and_is_answered(peer: ScriptedPeer) -> None:
    connection = await connect(peer.url)
    held, free = await connection.channel(), await connection.channel()
    peer.send(spec.Channel.Flow(active=False), held.number)
    await eventually(lambda: len(peer.sent(spec.Channel.FlowOk)) == 1, timeout=5)
    assert peer.sent(spec.Channel.FlowOk)[0][0] == held.number
    assert peer.sent(spec.Channel.FlowOk)[0][1].active is False
    waiting = asyncio.create_task(held.basic_publish(b"held", routing_key="q"))
    await free.basic_publish(b"free", routing_key="q")  # another channel is not held
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert [ch for ch, _ in peer.sent(spec.Basic.Publish)] == [free.number]
    peer.send(spec.Channel.Flow(active=True), held.number)
    await asyncio.wait_for(waiting, 5)
    await eventually(lambda: len(peer.sent(spec.Basic.Publish)) == 2, timeout=5)
    await connection.close()


async def test_a_silent_broker_is_lost_after_two_heartbeat_intervals() -> None:
    peer = ScriptedPeer(heartbeat=1)  # lower than our 60: the broker's value wins
    await peer.start()
    try:
        connection = await connect(peer.url)
        assert connection.heartbeat == 1
        channel = await connection.channel(confirms=True)
        pending = asyncio.create_task(channel.basic_publish(b"never confirmed", routing_key="q"))
        started = asyncio.get_running_loop().time()
        with pytest.raises(driver.ConnectionClosed, match="missed heartbeats from the broker"):
            await asyncio.wait_for(asyncio.shield(connection.closing), 10)
        waited = asyncio.get_running_loop().time() - started
        assert 2.0 <= waited <= 4.5  # two 1 s intervals, and a tick of slack on a busy machine
        with pytest.raises(driver.ConnectionClosed, match="missed heartbeats"):
            await pending
        assert isinstance(channel.closing.exception(), driver.ConnectionClosed)
        assert len(peer.sent(Heartbeat)) >= 2  # we beat while nothing else was written
    finally:
        await peer.close()


async def test_a_broker_that_beats_keeps_the_connection() -> None:
    peer = ScriptedPeer(heartbeat=1)
    await peer.start()
    try:
        connection = await connect(peer.url)
        for _ in range(8):
            await asyncio.sleep(0.5)
            peer.send(Heartbeat())
        assert not connection.is_closed
        await connection.close()
    finally:
        await peer.close()


async def test_ack_and_nack_with_multiple_settle_every_tag_up_to_theirs(peer: ScriptedPeer) -> None:
    connection = await connect(peer.url)
    channel = await connection.channel(confirms=True)
    publishes = [asyncio.create_task(channel.basic_publish(b"%d" % n, routing_key="q")) for n in range(6)]
    await eventually(lambda: len(peer.sent(spec.Basic.Publish)) == 6, timeout=5)
    peer.send(spec.Basic.Ack(delivery_tag=3, multiple=True), channel.number)
    await asyncio.wait(publishes[:3], timeout=5)
    assert [p.done() for p in publishes] == [True] * 3 + [False] * 3
    peer.send(spec.Basic.Nack(delivery_tag=5, multiple=False), channel.number)
    peer.send(spec.Basic.Ack(delivery_tag=4, multiple=False), channel.number)
    peer.send(spec.Basic.Nack(delivery_tag=6, multiple=True), channel.number)
    results = await asyncio.gather(*publishes, return_exceptions=True)
    assert results[:4] == [None] * 4
    assert isinstance(results[4], driver.Nacked) and isinstance(results[5], driver.Nacked)
    await connection.close()


async def test_a_return_goes_to_the_publish_its_confirm_covers(peer: ScriptedPeer) -> None:
    """Two mandatory publishes alike in exchange, routing key and body (a binding came between them):
    the broker returns the second, then acks it alone; the first is not the one returned."""
    connection = await connect(peer.url)
    channel = await connection.channel(confirms=True)
    first = asyncio.create_task(channel.basic_publish(b"same", routing_key="k", mandatory=True))
    second = asyncio.create_task(channel.basic_publish(b"same", routing_key="k", mandatory=True))
    await eventually(lambda: len(peer.sent(spec.Basic.Publish)) == 2, timeout=5)
    peer.send(spec.Basic.Return(312, "NO_ROUTE", "", "k"), channel.number)
    peer.send(ContentHeader(body_size=4, properties=spec.Basic.Properties(message_id="x")), channel.number)
    peer.send(ContentBody(b"same"), channel.number)
    peer.send(spec.Basic.Ack(delivery_tag=2), channel.number)
    with pytest.raises(driver.Returned) as returned:
        await asyncio.wait_for(second, 5)
    assert returned.value.message.reply_text == "NO_ROUTE" and returned.value.message.body == b"same"
    assert not first.done()
    peer.send(spec.Basic.Ack(delivery_tag=1), channel.number)
    assert await asyncio.wait_for(first, 5) is None
    await connection.close()


async def test_rpcs_of_a_channel_go_one_at_a_time_and_a_late_reply_is_not_the_next_one_s(
    peer: ScriptedPeer,
) -> None:
    connection = await connect(peer.url)
    channel = await connection.channel()
    with pytest.raises(TimeoutError):  # the first caller gives up; its RPC stays in flight
        await asyncio.wait_for(channel.queue_declare("first"), 0.2)
    second = asyncio.create_task(channel.queue_declare("second"))
    third = asyncio.create_task(channel.queue_purge("third"))
    await asyncio.sleep(0.2)
    assert [f.queue for _, f in peer.sent(spec.Queue.Declare)] == ["first"]  # one in flight
    peer.send(spec.Queue.DeclareOk("first", 1, 0), channel.number)
    await eventually(lambda: len(peer.sent(spec.Queue.Declare)) == 2, timeout=5)
    peer.send(spec.Queue.DeclareOk("second", 2, 0), channel.number)
    await eventually(lambda: len(peer.sent(spec.Queue.Purge)) == 1, timeout=5)
    peer.send(spec.Queue.PurgeOk(7), channel.number)
    assert await asyncio.wait_for(second, 5) == driver.QueueInfo("second", 2, 0)
    assert await asyncio.wait_for(third, 5) == 7
    await connection.close()


async def test_a_channel_closed_by_the_broker_fails_its_rpc_and_is_never_logged_unretrieved(
    peer: ScriptedPeer,
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    connection = await connect(peer.url)
    watched, unwatched = await connection.channel(), await connection.channel()
    declare = asyncio.create_task(watched.queue_declare("missing", passive=True))
    await eventually(lambda: len(peer.sent(spec.Queue.Declare)) == 1, timeout=5)
    peer.send(spec.Channel.Close(404, "NOT_FOUND - no queue 'missing'", 50, 10), watched.number)
    peer.send(spec.Channel.Close(406, "PRECONDITION_FAILED - nobody looks", 60, 80), unwatched.number)
    with pytest.raises(driver.NotFound, match="no queue 'missing'"):
        await asyncio.wait_for(declare, 5)
    await eventually(lambda: len(peer.sent(spec.Channel.CloseOk)) == 2, timeout=5)  # both answered
    assert unwatched.is_closed and watched.is_closed
    del unwatched
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []
    peer.send(spec.Connection.Close(320, "CONNECTION_FORCED - shutdown", 0, 0))
    with pytest.raises(driver.ConnectionClosed, match="CONNECTION_FORCED") as closed:
        await asyncio.wait_for(asyncio.shield(connection.closing), 5)
    assert closed.value.reply_code == 320
    await eventually(lambda: len(peer.sent(spec.Connection.CloseOk)) == 1, timeout=5)
    del connection
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


async def test_a_delivery_arriving_byte_by_byte_in_many_body_frames_is_one_delivery() -> None:
    peer = ScriptedPeer(frame_max=4096)
    await peer.start()
    try:
        connection = await connect(peer.url)
        assert connection.frame_max == 4096
        channel = await connection.channel()
        got: list[driver.Delivery] = []
        consume = asyncio.create_task(channel.basic_consume("q", got.append))
        await eventually(lambda: len(peer.sent(spec.Basic.Consume)) == 1, timeout=5)
        body = bytes(range(256)) * 40  # 10,240 bytes: three body frames
        raw = b"".join(
            [
                pamqp.frame.marshal(spec.Basic.ConsumeOk("ctag"), channel.number),
                pamqp.frame.marshal(spec.Basic.Deliver("ctag", 1, False, "ex", "rk"), channel.number),
                pamqp.frame.marshal(
                    ContentHeader(body_size=len(body), properties=spec.Basic.Properties(app_id="a")),
                    channel.number,
                ),
                *(
                    pamqp.frame.marshal(ContentBody(body[i : i + 4088]), channel.number)
                    for i in range(0, len(body), 4088)
                ),
                pamqp.frame.marshal(spec.Basic.Deliver("ctag", 2, True, "ex", "rk"), channel.number),
                pamqp.frame.marshal(ContentHeader(body_size=0), channel.number),
            ]
        )
        assert peer.writer is not None
        for i in range(0, len(raw), 7):  # odd-sized pieces, each its own read
            peer.writer.write(raw[i : i + 7])
            await peer.writer.drain()
            await asyncio.sleep(0)
        assert await asyncio.wait_for(consume, 5) == "ctag"
        await eventually(lambda: len(got) == 2, timeout=5)
        assert (got[0].body, got[0].properties.app_id, got[0].routing_key) == (body, "a", "rk")
        assert (got[1].body, got[1].redelivered, got[1].delivery_tag) == (b"", True, 2)
        await connection.close()
    finally:
        await peer.close()


async def test_a_broker_cancel_is_answered_and_told_to_the_consumer(peer: ScriptedPeer) -> None:
    connection = await connect(peer.url)
    channel = await connection.channel()
    cancelled: list[str] = []
    consume = asyncio.create_task(channel.basic_consume("q", lambda d: None, on_cancel=cancelled.append))
    await eventually(lambda: len(peer.sent(spec.Basic.Consume)) == 1, timeout=5)
    peer.send(spec.Basic.ConsumeOk("ctag"), channel.number)
    await asyncio.wait_for(consume, 5)
    peer.send(spec.Basic.Cancel("ctag", nowait=False), channel.number)
    await eventually(lambda: cancelled == ["ctag"], timeout=5)
    await eventually(
        lambda: [f.consumer_tag for _, f in peer.sent(spec.Basic.CancelOk)] == ["ctag"], timeout=5
    )
    await connection.close()


class RecordingTransport(asyncio.Transport):
    """A transport of the test's own that keeps every write, to count them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def test_what_one_loop_turn_sends_leaves_in_one_write() -> None:
    loop = asyncio.get_running_loop()
    connection = amqp.AMQPConnection(parse("amqp://guest:guest@127.0.0.1/"), name="t", node="t", loop=loop)
    transport = RecordingTransport()
    connection.connection_made(transport)
    for frame in (spec.Connection.Start(mechanisms="PLAIN"), spec.Connection.Tune(0, 131072, 0)):
        connection.data_received(pamqp.frame.marshal(frame, 0))
    connection.data_received(pamqp.frame.marshal(spec.Connection.OpenOk(), 0))
    opening = asyncio.create_task(connection.channel())
    await asyncio.sleep(0)
    connection.data_received(pamqp.frame.marshal(spec.Channel.OpenOk(), 1))
    channel = await opening
    await asyncio.sleep(0)

    def frames_of(data: bytes) -> list[type]:
        kinds = []
        while data:
            used, _, frame = pamqp.frame.unmarshal(data)
            kinds.append(type(frame))
            data = data[used:]
        return kinds

    before = len(transport.writes)
    for tag in range(1, 101):
        channel.basic_ack(tag)
    channel.basic_nack(101, requeue=False)
    await asyncio.sleep(0)
    assert len(transport.writes) == before + 1  # 100 acks and a nack: one write
    assert frames_of(transport.writes[-1]) == [spec.Basic.Ack] * 100 + [spec.Basic.Nack]
    publishes = [asyncio.create_task(channel.basic_publish(b"body", routing_key="q")) for _ in range(10)]
    await asyncio.gather(*publishes)
    await asyncio.sleep(0)
    assert len(transport.writes) == before + 2  # ten publishes of one turn: one write
    assert frames_of(transport.writes[-1]) == [spec.Basic.Publish, ContentHeader, ContentBody] * 10


def handshake(url: str, tune: spec.Connection.Tune) -> tuple[Any, RecordingTransport]:
    """A connection fed the broker's Start and ``tune``: what it answers, on a recording transport."""
    loop = asyncio.get_running_loop()
    connection = amqp.AMQPConnection(parse(url), name="t", node="t", loop=loop)
    transport = RecordingTransport()
    connection.connection_made(transport)
    connection.data_received(pamqp.frame.marshal(spec.Connection.Start(mechanisms="AMQPLAIN PLAIN"), 0))
    connection.data_received(pamqp.frame.marshal(tune, 0))
    return connection, transport


def sent_frames(transport: RecordingTransport) -> list[Any]:
    data = b"".join(transport.writes)[8:]  # after the protocol header
    found = []
    while data:
        used, _, frame = pamqp.frame.unmarshal(data)
        found.append(frame)
        data = data[used:]
    return found


@pytest.mark.parametrize(
    ("query", "theirs", "agreed"),
    [
        ("", 60, 60),
        ("", 0, 60),
        ("?heartbeat=30", 60, 30),
        ("?heartbeat=30", 10, 10),
        ("?heartbeat=0", 60, 0),
    ],
)
async def test_heartbeat_frame_max_and_channel_max_are_negotiated(
    query: str, theirs: int, agreed: int
) -> None:
    connection, transport = handshake(f"amqp://u:p@h/v{query}", spec.Connection.Tune(0, 1 << 20, theirs))
    await asyncio.sleep(0)
    start_ok, tune_ok, open_ = sent_frames(transport)
    assert start_ok.response == "\0u\0p" and start_ok.mechanism == "PLAIN"
    assert start_ok.client_properties["connection_name"] == "t"
    assert (tune_ok.heartbeat, tune_ok.frame_max, tune_ok.channel_max) == (agreed, 131072, 65535)
    assert open_.virtual_host == "v"
    assert (connection.heartbeat, connection.frame_max) == (agreed, 131072)


async def test_a_broker_without_plain_is_refused_before_the_login() -> None:
    loop = asyncio.get_running_loop()
    connection = amqp.AMQPConnection(parse("amqp://u:p@h/"), name="t", node="t", loop=loop)
    transport = RecordingTransport()
    connection.connection_made(transport)
    connection.data_received(pamqp.frame.marshal(spec.Connection.Start(mechanisms="EXTERNAL"), 0))
    with pytest.raises(Exception, match=r"we speak PLAIN, the broker offers \['EXTERNAL'\]"):
        await connection.opened
    assert transport.closed and sent_frames(transport) == []


async def test_a_cancelled_connect_leaves_no_socket_open() -> None:
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client closes
        hung_up.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connecting = asyncio.create_task(
            amqp.open_connection(f"amqp://g:g@127.0.0.1:{port}/", name="t", timeout=30)
        )
        await asyncio.sleep(0.2)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        await asyncio.wait_for(hung_up.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


async def opened_on_recorder() -> tuple[Any, RecordingTransport, Any]:
    """A connection through the handshake on a recording transport, with channel 1 open."""
    connection, transport = handshake("amqp://u:p@h/", spec.Connection.Tune(0, 131072, 0))
    connection.data_received(pamqp.frame.marshal(spec.Connection.OpenOk(), 0))
    opening = asyncio.create_task(connection.channel())
    await asyncio.sleep(0)
    connection.data_received(pamqp.frame.marshal(spec.Channel.OpenOk(), 1))
    return connection, transport, await opening


async def test_bytes_that_are_not_a_frame_end_the_connection_with_a_frame_error() -> None:
    connection, transport, channel = await opened_on_recorder()
    damaged = bytearray(pamqp.frame.marshal(spec.Basic.Ack(1), 1))
    damaged[-1] = 0  # no frame-end octet
    connection.data_received(bytes(damaged))
    with pytest.raises(driver.ConnectionClosed, match="FRAME_ERROR") as closed:
        await connection.closing
    assert closed.value.reply_code == 501 and transport.closed
    assert isinstance(channel.closing.exception(), driver.ConnectionClosed)


async def test_a_failing_delivery_callback_does_not_stop_the_next_deliveries(caplog: Any) -> None:
    connection, _, channel = await opened_on_recorder()
    got: list[int] = []

    def on_delivery(delivery: driver.Delivery) -> None:
        got.append(delivery.delivery_tag)
        if delivery.delivery_tag == 1:
            raise RuntimeError("handler bug")

    consuming = asyncio.create_task(channel.basic_consume("q", on_delivery))
    await asyncio.sleep(0)
    raw = [pamqp.frame.marshal(spec.Basic.ConsumeOk("c"), 1)]
    for tag in (1, 2):
        raw += [
            pamqp.frame.marshal(spec.Basic.Deliver("c", tag, False, "", "q"), 1),
            pamqp.frame.marshal(ContentHeader(body_size=2), 1),
            pamqp.frame.marshal(ContentBody(b"{}"), 1),
        ]
    connection.data_received(b"".join(raw))
    await consuming
    assert got == [1, 2]
    assert "the on_delivery callback of consumer c failed" in caplog.text
    assert not connection.is_closed


async def test_closing_a_channel_and_the_connection_waits_for_the_broker_s_close_ok(
    peer: ScriptedPeer,
) -> None:
    connection = await connect(peer.url)
    channel = await connection.channel(confirms=True)
    unconfirmed = asyncio.create_task(channel.basic_publish(b"x", routing_key="q"))
    await eventually(lambda: len(peer.sent(spec.Basic.Publish)) == 1, timeout=5)
    await channel.close()
    assert [(ch, f.reply_code) for ch, f in peer.sent(spec.Channel.Close)] == [(channel.number, 200)]
    assert channel.is_closed and channel.closing.result() is None  # we closed it: no error
    with pytest.raises(driver.ChannelInvalidState):
        await unconfirmed
    await connection.close()
    assert [f.reply_code for _, f in peer.sent(spec.Connection.Close)] == [200]
    assert connection.is_closed and connection.closing.result() is None
    await connection.close()  # again: nothing more to do
    assert len(peer.sent(spec.Connection.Close)) == 1
