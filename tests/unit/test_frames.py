"""The lean frame decoders give exactly what pamqp gives for the same bytes, and defer to it for the
rest: any frame, well formed or not."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import aiormq.connection
import pamqp.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from event import frames

short = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
tags = st.integers(min_value=1, max_value=2**63 - 1)  # pamqp encodes signed
field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), max_size=3),
)
tables = st.dictionaries(short.filter(bool), field_values, max_size=4)
timestamps = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2),
    max_value=datetime.datetime(2100, 1, 1),
    timezones=st.just(datetime.UTC),
).map(lambda d: d.replace(microsecond=0))


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


properties = st.builds(
    spec.Basic.Properties,
    content_type=optional(short),
    content_encoding=optional(short),
    headers=optional(tables),
    delivery_mode=optional(st.sampled_from([1, 2])),
    priority=optional(st.integers(min_value=0, max_value=255)),
    correlation_id=optional(short),
    reply_to=optional(short),
    expiration=optional(st.integers(min_value=0, max_value=10**9).map(str)),
    message_id=optional(short),
    timestamp=optional(timestamps),
    message_type=optional(short),
    user_id=optional(short),
    app_id=optional(short),
)

method_frames = st.one_of(
    st.builds(
        spec.Basic.Deliver,
        consumer_tag=short,
        delivery_tag=tags,
        redelivered=st.booleans(),
        exchange=st.from_regex(r"[a-zA-Z0-9_.:-]{0,20}", fullmatch=True),
        routing_key=short,
    ),
    st.builds(spec.Basic.Ack, delivery_tag=tags, multiple=st.booleans()),
    st.builds(spec.Basic.Nack, delivery_tag=tags, multiple=st.booleans(), requeue=st.booleans()),
    st.builds(spec.Basic.Reject, delivery_tag=tags, requeue=st.booleans()),
    st.builds(spec.Basic.CancelOk, consumer_tag=short),
)
header_frames = st.builds(
    ContentHeader, body_size=st.integers(min_value=0, max_value=2**63 - 1), properties=properties
)
# The broker sends no body frame for an empty body (and pamqp refuses one): at least one byte.
body_frames = st.binary(min_size=1, max_size=300).map(ContentBody)
any_frame = st.one_of(method_frames, header_frames, body_frames)


def attributes(frame: Any) -> dict[str, Any]:
    """Every value a frame carries, nested properties included."""
    if isinstance(frame, ContentHeader):
        return {
            "class_id": frame.class_id,
            "weight": frame.weight,
            "body_size": frame.body_size,
            "properties": attributes(frame.properties),
        }
    if isinstance(frame, ContentBody):
        return {"value": frame.value}
    return {name: getattr(frame, name) for name in frame.__slots__}


def split(raw: bytes) -> tuple[bytes, bytes]:
    return raw[:7], raw[7:]


@settings(max_examples=400, deadline=None)
@given(frame=any_frame, channel=st.integers(min_value=0, max_value=2047))
def test_decodes_what_pamqp_decodes(frame: Any, channel: int) -> None:
    raw = pamqp.frame.marshal(frame, channel)
    theirs = pamqp.frame.unmarshal(raw)
    ours = frames.decode_frame(*split(raw))
    assert ours[:2] == theirs[:2]
    assert type(ours[2]) is type(theirs[2])
    assert attributes(ours[2]) == attributes(theirs[2])


@settings(max_examples=300, deadline=None)
@given(frame=any_frame, cut=st.integers(min_value=8, max_value=400), junk=st.binary(min_size=1, max_size=4))
def test_a_damaged_frame_is_pamqps_to_judge(frame: Any, cut: int, junk: bytes) -> None:
    """Truncated or padded payloads: the same result or the same exception type as pamqp."""
    raw = pamqp.frame.marshal(frame, 1)
    head, payload = split(raw)
    for damaged in (payload[: max(1, len(payload) - cut)], payload[:-1] + junk + payload[-1:]):
        try:
            theirs: Any = pamqp.frame.unmarshal(head + damaged)
        except Exception as exc:  # whatever pamqp raises, we must raise too
            with pytest.raises(type(exc)):
                frames.decode_frame(head, damaged)
            continue
        ours = frames.decode_frame(head, damaged)
        assert attributes(ours[2]) == attributes(theirs[2])


def test_only_our_connections_get_the_lean_reader() -> None:
    frames.install()

    async def receivers() -> tuple[object, object]:
        ours, theirs = asyncio.StreamReader(), asyncio.StreamReader()
        frames._lean_streams.add(ours)
        return aiormq.connection.FrameReceiver(ours), aiormq.connection.FrameReceiver(theirs)

    ours, theirs = asyncio.run(receivers())
    assert type(ours) is frames.LeanFrameReceiver
    assert type(theirs) is not frames.LeanFrameReceiver
    assert isinstance(theirs, frames._aiormq_receiver)


def test_the_lean_reader_reads_a_stream_of_frames() -> None:
    sent = [
        spec.Basic.Deliver("ctag", 7, True, "hutch", "app.x"),
        ContentHeader(body_size=5, properties=spec.Basic.Properties(content_type="application/json")),
        ContentBody(b"[1,2]"),
    ]

    async def read() -> list[Any]:
        reader = asyncio.StreamReader()
        for frame in sent:
            reader.feed_data(pamqp.frame.marshal(frame, 3))
        reader.feed_eof()
        receiver = frames.LeanFrameReceiver(reader)
        got = [await receiver.get_frame() for _ in sent]
        with pytest.raises(aiormq.exceptions.AMQPConnectionError, match="unexpectedly closed"):
            reader2 = asyncio.StreamReader()
            reader2.feed_data(pamqp.frame.marshal(sent[0], 3)[:10])
            reader2.feed_eof()
            await frames.LeanFrameReceiver(reader2).get_frame()
        return got

    got = asyncio.run(read())
    assert [channel for _, channel, _ in got] == [3, 3, 3]
    expected = [pamqp.frame.unmarshal(pamqp.frame.marshal(frame, 3))[2] for frame in sent]
    assert [attributes(f) for _, _, f in got] == [attributes(f) for f in expected]
    assert got[1][2].properties.content_type == "application/json"
