"""The lean codecs of event.amqp.frames agree with pamqp, the reference, for any frame: each decoder
reads what pamqp reads from the bytes pamqp writes, and each encoder writes the bytes pamqp writes."""

from __future__ import annotations

import datetime
import struct
from typing import Any

import pamqp.decode
import pamqp.encode
import pamqp.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from support import examples

from event.amqp import frames

short = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
names = st.from_regex(r"[a-zA-Z0-9_.:-]{0,40}", fullmatch=True)  # what pamqp accepts as exchange names
tags = st.integers(min_value=1, max_value=2**63 - 1)  # pamqp encodes delivery tags signed
timestamps = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2),
    max_value=datetime.datetime(2100, 1, 1),
    timezones=st.just(datetime.UTC),
).map(lambda d: d.replace(microsecond=0))
keys = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 128)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=30),
    st.floats(allow_nan=False, width=32),
    st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
    timestamps,
    st.binary(max_size=10).map(bytearray),
)
# Headers tables with nested tables and arrays, as x-death headers have.
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=12,
)
tables = st.dictionaries(keys, values, max_size=5)


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
channels = st.integers(min_value=1, max_value=2047)


def payload(raw: bytes) -> tuple[bytes, int, int]:
    """A marshalled method frame as the protocol sees it: the bytes, where the arguments start (after
    the method id) and where the payload ends (before the frame-end octet)."""
    return raw, 7 + 4, len(raw) - 1


def attributes(thing: Any) -> dict[str, Any]:
    return {name: getattr(thing, name) for name in thing.__slots__}


def reference(raw: bytes) -> Any:
    return pamqp.frame.unmarshal(raw)[2]


# --- decoders ------------------------------------------------------------------------------------------


@settings(max_examples=examples(300), deadline=None)
@given(
    consumer_tag=short, tag=tags, redelivered=st.booleans(), exchange=names, routing_key=short, ch=channels
)
def test_deliver_reads_what_pamqp_reads(
    consumer_tag: str, tag: int, redelivered: bool, exchange: str, routing_key: str, ch: int
) -> None:
    raw = pamqp.frame.marshal(spec.Basic.Deliver(consumer_tag, tag, redelivered, exchange, routing_key), ch)
    theirs = reference(raw)
    ours = frames.decode_deliver(*payload(raw))
    assert ours == (
        theirs.consumer_tag,
        theirs.delivery_tag,
        theirs.redelivered,
        theirs.exchange,
        theirs.routing_key,
    )


@settings(max_examples=examples(200), deadline=None)
@given(
    tag=tags, redelivered=st.booleans(), exchange=names, routing_key=short, count=st.integers(0, 2**32 - 1)
)
def test_get_ok_reads_what_pamqp_reads(
    tag: int, redelivered: bool, exchange: str, routing_key: str, count: int
) -> None:
    raw = pamqp.frame.marshal(spec.Basic.GetOk(tag, redelivered, exchange, routing_key, count), 1)
    theirs = reference(raw)
    assert frames.decode_get_ok(*payload(raw)) == (
        theirs.delivery_tag,
        theirs.redelivered,
        theirs.exchange,
        theirs.routing_key,
        theirs.message_count,
    )


@settings(max_examples=examples(200), deadline=None)
@given(tag=tags, multiple=st.booleans(), requeue=st.booleans())
def test_ack_and_nack_read_what_pamqp_reads(tag: int, multiple: bool, requeue: bool) -> None:
    ack = pamqp.frame.marshal(spec.Basic.Ack(tag, multiple), 3)
    assert frames.decode_ack(*payload(ack)) == (reference(ack).delivery_tag, reference(ack).multiple)
    nack = pamqp.frame.marshal(spec.Basic.Nack(tag, multiple, requeue), 3)
    theirs = reference(nack)
    assert frames.decode_nack(*payload(nack)) == (theirs.delivery_tag, theirs.multiple, theirs.requeue)


@settings(max_examples=examples(200), deadline=None)
@given(code=st.integers(300, 599), text=short, exchange=names, routing_key=short)
def test_return_reads_what_pamqp_reads(code: int, text: str, exchange: str, routing_key: str) -> None:
    raw = pamqp.frame.marshal(spec.Basic.Return(code, text, exchange, routing_key), 5)
    theirs = reference(raw)
    ours = frames.decode_return(*payload(raw))
    assert ours == (theirs.reply_code, theirs.reply_text, theirs.exchange, theirs.routing_key)


@settings(max_examples=examples(300), deadline=None)
@given(props=properties, body_size=st.integers(min_value=0, max_value=2**63 - 1), ch=channels)
def test_content_header_reads_what_pamqp_reads(props: spec.Basic.Properties, body_size: int, ch: int) -> None:
    raw = pamqp.frame.marshal(ContentHeader(body_size=body_size, properties=props), ch)
    theirs = reference(raw)
    size, ours = frames.decode_header(raw, 7, len(raw) - 1)
    assert size == theirs.body_size
    assert type(ours) is type(theirs.properties)
    assert attributes(ours) == attributes(theirs.properties)


# Every field type letter RabbitMQ's errata define, including those pamqp's encoder never writes.
raw_values = st.one_of(
    st.booleans().map(lambda v: b"t" + bytes([v])),
    st.integers(-128, 127).map(lambda v: b"b" + struct.pack(">b", v)),
    st.integers(0, 255).map(lambda v: b"B" + struct.pack(">B", v)),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: b"s" + struct.pack(">h", v)),
    st.integers(0, 2**16 - 1).map(lambda v: b"u" + struct.pack(">H", v)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: b"I" + struct.pack(">i", v)),
    st.integers(0, 2**32 - 1).map(lambda v: b"i" + struct.pack(">I", v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: b"l" + struct.pack(">q", v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: b"L" + struct.pack(">q", v)),
    st.floats(allow_nan=False, width=32).map(lambda v: b"f" + struct.pack(">f", v)),
    st.floats(allow_nan=False).map(lambda v: b"d" + struct.pack(">d", v)),
    st.tuples(st.integers(0, 20), st.integers(-(2**31), 2**31 - 1)).map(
        lambda v: b"D" + struct.pack(">Bi", *v)
    ),
    st.binary(max_size=20).map(lambda v: b"S" + struct.pack(">I", len(v)) + v),  # not always UTF-8
    st.integers(0, 2**34).map(lambda v: b"T" + struct.pack(">Q", v)),
    st.just(b"V"),
    st.binary(max_size=10).map(lambda v: b"x" + struct.pack(">I", len(v)) + v),
)


def table_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(bytes([len(k.encode())]) + k.encode() + v for k, v in entries)
    return struct.pack(">I", len(body)) + body


@settings(max_examples=examples(300), deadline=None)
@given(entries=st.lists(st.tuples(keys, raw_values), max_size=6), nested=st.booleans())
def test_a_table_of_any_field_types_reads_as_pamqp_reads_it(
    entries: list[tuple[str, bytes]], nested: bool
) -> None:
    raw = table_bytes(entries)
    if nested:  # the same values inside a nested table and an array
        array = b"".join(v for _, v in entries)
        raw = table_bytes([("inner", b"F" + raw), ("list", b"A" + struct.pack(">I", len(array)) + array)])
    header = struct.pack(">HHQH", 60, 0, 0, spec.Basic.Properties.flags["headers"]) + raw
    try:
        theirs: Any = pamqp.decode.field_table(raw)[1]
    except (ValueError, OverflowError, OSError) as exc:  # e.g. a timestamp out of datetime's range
        with pytest.raises(type(exc)):
            frames.decode_header(header, 0, len(header))
        return
    assert frames.decode_header(header, 0, len(header))[1].headers == theirs


@settings(max_examples=examples(300), deadline=None)
@given(
    frame=st.one_of(
        st.builds(spec.Basic.Deliver, short, tags, st.booleans(), names, short),
        st.builds(spec.Basic.Return, st.integers(300, 599), short, names, short),
        st.builds(ContentHeader, st.just(0), st.integers(0, 2**40), properties),
    ),
    cut=st.integers(min_value=1, max_value=60),
    junk=st.binary(min_size=1, max_size=4),
)
def test_a_damaged_frame_is_refused_or_read_as_pamqp_reads_it(frame: Any, cut: int, junk: bytes) -> None:
    """Truncated or padded payloads: our decoder either raises (and the connection ends) or reads
    exactly what pamqp reads; it never reads something else."""
    raw = pamqp.frame.marshal(frame, 1)
    body = raw[7:-1]
    decode: Any
    if isinstance(frame, ContentHeader):
        start, decode = 0, frames.decode_header
    else:
        start = 4
        decode = frames.decode_deliver if isinstance(frame, spec.Basic.Deliver) else frames.decode_return
    for damaged in (body[: max(start, len(body) - cut)], body + junk):
        try:
            ours = decode(damaged, start, len(damaged))
        except (ValueError, IndexError, struct.error):
            continue
        theirs = pamqp.frame.unmarshal(pamqp.frame._marshal(raw[0], 1, damaged))[2]
        if isinstance(frame, ContentHeader):
            assert ours[0] == theirs.body_size and attributes(ours[1]) == attributes(theirs.properties)
        else:
            assert list(ours) == [getattr(theirs, name) for name in theirs.__slots__ if name != "ticket"]


# --- encoders ------------------------------------------------------------------------------------------


def pamqp_publish(
    ch: int, exchange: str, routing_key: str, mandatory: bool, props: Any, body: bytes, frame_max: int
) -> bytes:
    method = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    parts = [
        pamqp.frame.marshal(method, ch),
        pamqp.frame.marshal(ContentHeader(body_size=len(body), properties=props), ch),
    ]
    chunk = frame_max - 8
    parts += [pamqp.frame.marshal(ContentBody(body[i : i + chunk]), ch) for i in range(0, len(body), chunk)]
    return b"".join(parts)


@settings(max_examples=examples(200), deadline=None)
@given(
    ch=channels,
    exchange=names,
    routing_key=short,
    mandatory=st.booleans(),
    props=optional(properties),
    body=st.one_of(st.just(b""), st.binary(max_size=300), st.binary(min_size=4000, max_size=20000)),
    frame_max=st.sampled_from([4096, 8192, 131072]),
)
def test_publish_writes_what_pamqp_writes(
    ch: int, exchange: str, routing_key: str, mandatory: bool, props: Any, body: bytes, frame_max: int
) -> None:
    ours = frames.encode_publish(ch, exchange, routing_key, mandatory, props, body, frame_max)
    expected = pamqp_publish(ch, exchange, routing_key, mandatory, props, body, frame_max)
    assert ours == expected
    assert all(len(piece) <= frame_max for piece in split_frames(ours))


@settings(max_examples=200, deadline=None)
@given(
    ch=channels,
    props=optional(properties),
    body=st.one_of(st.just(b""), st.binary(max_size=300), st.binary(min_size=4000, max_size=20000)),
    frame_max=st.sampled_from([4096, 8192, 131072]),
)
def test_content_parts_are_the_content_frames_with_the_body_by_reference(
    ch: int, props: Any, body: bytes, frame_max: int
) -> None:
    parts = frames.encode_content_parts(ch, props, body, frame_max)
    assert b"".join(parts) == frames.encode_content(ch, props, body, frame_max)
    # The body's bytes are in the pieces as themselves or views of it, in order, never copied.
    views = [part for part in parts if isinstance(part, memoryview) or part is body]
    assert all(view.obj is body for view in views if isinstance(view, memoryview))
    assert b"".join(views) == body
    assert all(len(view) <= frame_max - 8 for view in views)


def test_content_parts_of_a_bytearray_hold_a_copy_not_a_view_of_it() -> None:
    body = bytearray(b"x" * 10000)
    parts = frames.encode_content_parts(1, None, body, 4096)  # type: ignore[arg-type]
    body[:] = b"y"  # the caller's buffer is free to change and to resize
    assert b"".join(parts) == frames.encode_content(1, None, b"x" * 10000, 4096)


def split_frames(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        size = struct.unpack_from(">I", data, at + 3)[0]
        out.append(data[at : at + size + 8])
        at += size + 8
    return out


@settings(max_examples=examples(200), deadline=None)
@given(props=properties)
def test_properties_and_tables_write_what_pamqp_writes(props: spec.Basic.Properties) -> None:
    flags, data = frames.encode_properties(props)
    assert struct.pack(">H", flags) + data == props.marshal()
    assert frames.encode_table(props.headers or {}) == pamqp.encode.field_table(props.headers or {})


@settings(max_examples=examples(200), deadline=None)
@given(ch=channels, tag=tags, multiple=st.booleans(), requeue=st.booleans())
def test_ack_nack_and_reject_write_what_pamqp_writes(
    ch: int, tag: int, multiple: bool, requeue: bool
) -> None:
    assert frames.encode_ack(ch, tag, multiple) == pamqp.frame.marshal(spec.Basic.Ack(tag, multiple), ch)
    assert frames.encode_nack(ch, tag, multiple, requeue) == pamqp.frame.marshal(
        spec.Basic.Nack(tag, multiple, requeue), ch
    )
    assert frames.encode_reject(ch, tag, requeue) == pamqp.frame.marshal(spec.Basic.Reject(tag, requeue), ch)


def test_a_name_longer_than_a_short_string_is_refused_not_truncated() -> None:
    with pytest.raises(ValueError, match="255 bytes"):
        frames.encode_publish(1, "x" * 256, "k", False, None, b"", 131072)
    with pytest.raises(ValueError, match="255 bytes"):
        frames.encode_properties(spec.Basic.Properties(message_id="é" * 128))


def test_a_naive_timestamp_is_written_as_utc_like_pamqp() -> None:
    naive = spec.Basic.Properties(timestamp=datetime.datetime(2024, 5, 1, 12, 0, 0))
    assert struct.pack(">H", frames.encode_properties(naive)[0]) + frames.encode_properties(naive)[1] == (
        naive.marshal()
    )
