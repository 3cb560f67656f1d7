"""A lean reader for the frames of the hot path, under aiormq.

Profiling the consumer showed that most of a message's cost was not ours, nor the broker's: it was
pamqp decoding the two frames that precede every body. pamqp decodes generically (a type lookup and a
slice of the remaining bytes per field, ``__init__`` validation of the objects it then overwrites),
some 20 µs per ``Basic.Deliver`` and as much per content header on our 2-core test machine. aiormq's
frame reader adds a lock, a ``BytesIO`` and three reads per frame on top. (``benches/frames.py``
measures both decoders on the frames of one message.)

So connections opened by ``event`` read their frames here: one read for the 7-byte frame header, one
for the payload, and straight-line decoders for the frames that come once per message
(``Basic.Deliver``, the content header, the body, and the ``Basic.Ack``/``Nack`` of publisher
confirms). They build the very pamqp objects aiormq expects, with the same values; every other frame,
and any frame these decoders find malformed, goes to pamqp, so errors read exactly as before. A
property test checks every decoder against pamqp.

How it is plugged in: aiormq builds its frame reader from a module-level name, with no option to pass
another. ``install()`` replaces that name once with a factory that gives the lean reader only to
streams opened through :data:`transport_factory` (our connections) and aiormq's own reader to every
other stream, so other users of aiormq or aio-pika in the same process are untouched.
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from collections.abc import Callable
from typing import Any

import aiormq.connection
import aiormq.exceptions
import pamqp.decode
import pamqp.exceptions
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, ProtocolSyntaxError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from yarl import URL

ReceivedFrame = tuple[int, int, Any]

FRAME_END = 0xCE
_FRAME_HEADER = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">HH")
_LONGLONG = struct.Struct(">Q")
_HEADER_START = struct.Struct(">HHQH")  # class id, weight, body size, first property flags

_DELIVER = (spec.Basic.frame_id, spec.Basic.Deliver.frame_id)
_ACK = (spec.Basic.frame_id, spec.Basic.Ack.frame_id)
_NACK = (spec.Basic.frame_id, spec.Basic.Nack.frame_id)

_Properties = spec.Basic.Properties
# Basic.Properties in wire order: (attribute, flag bit, how its value is encoded).
_PROPERTY_LAYOUT = [
    (name, _Properties.flags[name], getattr(_Properties, "_" + name)) for name in _Properties.__slots__
]
# What pamqp leaves in a property the header does not carry (``None``, but ``''`` for cluster_id).
_UNSET = [(name, getattr(_Properties(), name)) for name in _Properties.__slots__]
# The properties a flag word announces, in wire order.
_PRESENT: dict[int, list[tuple[str, str]]] = {}
# _content_header decodes these kinds only; a pamqp with other property types must fail loudly at import
# (an assert would vanish under python -O and leave an unknown kind decoded as a timestamp).
_KNOWN_KINDS = {"shortstr", "octet", "table", "timestamp"}
if not {kind for _, _, kind in _PROPERTY_LAYOUT} <= _KNOWN_KINDS:
    raise ImportError(f"event.frames does not know this pamqp's Basic.Properties: {_PROPERTY_LAYOUT}")


class _Fallback(Exception):
    """This frame is for pamqp to decode."""


def _short_str(data: bytes, at: int) -> tuple[str, int]:
    end = at + 1 + data[at]
    if end > len(data):
        raise _Fallback
    return data[at + 1 : end].decode(), end


def _deliver(payload: bytes) -> spec.Basic.Deliver:
    consumer_tag, at = _short_str(payload, 4)
    (delivery_tag,) = _LONGLONG.unpack_from(payload, at)
    redelivered = bool(payload[at + 8] & 1)
    exchange, at = _short_str(payload, at + 9)
    routing_key, at = _short_str(payload, at)
    frame = spec.Basic.Deliver.__new__(spec.Basic.Deliver)
    frame.consumer_tag = consumer_tag
    frame.delivery_tag = delivery_tag
    frame.redelivered = redelivered
    frame.exchange = exchange
    frame.routing_key = routing_key
    return frame


def _ack(payload: bytes) -> spec.Basic.Ack:
    frame = spec.Basic.Ack.__new__(spec.Basic.Ack)
    (frame.delivery_tag,) = _LONGLONG.unpack_from(payload, 4)
    frame.multiple = bool(payload[12] & 1)
    return frame


def _nack(payload: bytes) -> spec.Basic.Nack:
    frame = spec.Basic.Nack.__new__(spec.Basic.Nack)
    (frame.delivery_tag,) = _LONGLONG.unpack_from(payload, 4)
    bits = payload[12]
    frame.multiple = bool(bits & 1)
    frame.requeue = bool(bits & 2)
    return frame


def _content_header(payload: bytes) -> ContentHeader:
    class_id, weight, body_size, flags = _HEADER_START.unpack_from(payload)
    if class_id != spec.Basic.frame_id or flags & 1:  # flag continuation words: never sent for Basic
        raise _Fallback
    present = _PRESENT.get(flags)
    if present is None:  # at most 2**14 flag words, in practice a handful
        present = _PRESENT[flags] = [(name, kind) for name, flag, kind in _PROPERTY_LAYOUT if flags & flag]
    properties = _Properties.__new__(_Properties)
    for name, default in _UNSET:
        setattr(properties, name, default)
    at = 14
    end = len(payload) - 1
    for name, kind in present:
        value: Any
        if kind == "shortstr":
            value, at = _short_str(payload, at)
        elif kind == "octet":
            value = payload[at]
            at += 1
        elif kind == "table":
            used, value = pamqp.decode.field_table(payload[at:end])
            at += used
        else:
            used, value = pamqp.decode.timestamp(payload[at : at + 8])
            at += used
        setattr(properties, name, value)
    if at != end:
        raise _Fallback
    header = ContentHeader.__new__(ContentHeader)
    header.class_id = class_id
    header.weight = weight
    header.body_size = body_size
    header.properties = properties
    return header


def _body(payload: bytes) -> ContentBody:
    return ContentBody(payload[:-1])


_METHODS: dict[tuple[int, int], Callable[[bytes], Any]] = {
    _DELIVER: _deliver,
    _ACK: _ack,
    _NACK: _nack,
}


def decode_frame(head: bytes, payload: bytes) -> ReceivedFrame:
    """Decode one frame: ``head`` its 7-byte header, ``payload`` the rest up to and with the frame-end
    octet. Returns what ``pamqp.frame.unmarshal`` returns for the same bytes."""
    frame_type, channel, size = _FRAME_HEADER.unpack(head)
    try:
        if not size or payload[-1] != FRAME_END or len(payload) != size + 1:
            raise _Fallback
        if frame_type == 3:
            return size + 8, channel, _body(payload)
        if frame_type == 1:
            method = _METHODS.get(_METHOD_ID.unpack_from(payload))
            if method is not None:
                return size + 8, channel, method(payload)
        elif frame_type == 2:
            return size + 8, channel, _content_header(payload)
    except (_Fallback, ValueError, IndexError, struct.error):
        pass  # pamqp decodes it, or raises its own precise error
    return pamqp.frame.unmarshal(head + payload)


class LeanFrameReceiver(aiormq.connection.FrameReceiver):
    """aiormq's frame reader with two reads per frame and :func:`decode_frame`.

    The reader task is the only caller once the connection is open (and the handshake before it
    calls in sequence), so the parent's lock is not needed."""

    async def get_frame(self) -> ReceivedFrame:
        reader = self.reader
        if reader.at_eof():
            raise StopAsyncIteration
        try:
            head = await reader.readexactly(7)
            if not self.started:
                if head.startswith(b"AMQP"):
                    raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                self.started = True
            payload = await reader.readexactly(_FRAME_HEADER.unpack(head)[2] + 1)
        except asyncio.IncompleteReadError as exc:
            raise AMQPConnectionError(
                "Server connection unexpectedly closed. "
                f"Read {len(exc.partial)} bytes but {exc.expected} bytes expected"
            ) from exc
        except OSError as exc:  # refused, reset and every other socket error
            raise AMQPConnectionError(f"Server connection error: {exc!r}") from exc
        try:
            return decode_frame(head, payload)
        except pamqp.exceptions.PAMQPException as exc:
            raise aiormq.exceptions.InvalidFrameError(str(exc)) from exc


# The streams of our own connections; only these get the lean reader.
_lean_streams: weakref.WeakSet[asyncio.StreamReader] = weakref.WeakSet()


class _LeanTransportFactory(aiormq.connection.TransportFactory):
    """aiormq's own TCP or TLS transport, its reader marked for :class:`LeanFrameReceiver`."""

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        inner: aiormq.connection.TransportFactory
        if url.scheme == "amqps":
            inner = aiormq.connection.TLSTransportFactory()
        else:
            inner = aiormq.connection.TCPTransportFactory()
        reader, writer = await inner.create(url, **kwargs)
        _lean_streams.add(reader)
        return reader, writer


transport_factory = _LeanTransportFactory()

_aiormq_receiver = aiormq.connection.FrameReceiver


def _frame_receiver(reader: asyncio.StreamReader) -> aiormq.connection.FrameReceiver:
    if reader in _lean_streams:
        return LeanFrameReceiver(reader)
    return _aiormq_receiver(reader)


def install() -> None:
    """Let connections opened with :data:`transport_factory` read through :class:`LeanFrameReceiver`
    (idempotent; other aiormq connections keep aiormq's reader)."""
    aiormq.connection.FrameReceiver = _frame_receiver  # type: ignore[misc,assignment]
