"""Lean codecs for the frames that come once per message, straight from and into the byte buffer.

pamqp decodes generically: a type lookup and a slice of the remaining bytes per field, and
``__init__`` validation of objects it then overwrites, some 20 µs per ``Basic.Deliver`` and as much per
content header on a small machine; its encoder is as generic. So the frames of the hot path have
straight-line codecs here:

- decoding ``Basic.Deliver``, ``Basic.Ack``/``Nack`` (publisher confirms), ``Basic.Return``, the
  content header (``Basic.Properties``) and field tables, reading from a ``bytearray`` at an offset
  (the protocol's receive buffer) without copying the frame out first;
- encoding ``Basic.Publish`` with its content header and body frames (split at ``frame_max``), and the
  ``Basic.Ack``/``Nack``/``Reject`` a consumer sends. A large body (:data:`LARGE_BODY` bytes or more)
  is not copied into the frames: :func:`encode_content_parts` gives the frames' own bytes and slices of
  the body (``memoryview``) for a vectored write, so a MiB body is copied once on its way to the socket
  (by the transport, for what the socket does not take at once), not two or three times.

Every other frame is pamqp's (``pamqp.frame.unmarshal`` / ``marshal``). pamqp is the reference: a
property test (tests/unit/test_amqp_frames.py) checks each codec here against it for arbitrary frames.
A decoder here raises ``ValueError`` (or ``IndexError``/``struct.error``) on bytes it does not
understand; the protocol then asks pamqp, whose error names the fault precisely.

The field-table decoder is bounded against a hostile peer: tables and arrays nest at most
:data:`MAX_TABLE_DEPTH` deep (a recursion per level: 5,000 levels would raise ``RecursionError``) and
one table or array holds at most :data:`MAX_TABLE_FIELDS` values (the bytes of a header are bounded
by ``frame_max`` already; the count bounds what one container makes of them, a 1-byte void becoming
an 8-byte list slot and a 3-byte field a dict entry of some 100).
"""

from __future__ import annotations

import calendar
import datetime
import decimal
import struct
import time
from typing import Any

import pamqp.encode
from pamqp import commands as spec

Properties = spec.Basic.Properties

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_OVERHEAD = 8  # 7-byte frame header and the frame-end octet

HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
METHOD_ID = struct.Struct(">I")  # class id << 16 | method id, pamqp's "index"
HEARTBEAT = HEAD.pack(FRAME_HEARTBEAT, 0, 0) + bytes([FRAME_END])

DELIVER = spec.Basic.Deliver.index
ACK = spec.Basic.Ack.index
NACK = spec.Basic.Nack.index
RETURN = spec.Basic.Return.index
GET_OK = spec.Basic.GetOk.index

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TAG_BITS = struct.Struct(">QB")
_HEADER_START = struct.Struct(">HHQH")  # class id, weight, body size, first property flags
_RETURN_CODE = struct.Struct(">H")

_B = struct.Struct(">b")
_S = struct.Struct(">h")
_I = struct.Struct(">i")
_L = struct.Struct(">l")
_Q = struct.Struct(">q")
_F = struct.Struct(">f")
_D = struct.Struct(">d")
_DECIMAL = struct.Struct(">Bi")

MAX_TABLE_DEPTH = 32  # tables and arrays within tables; RabbitMQ's own x-death headers nest 3 deep
MAX_TABLE_FIELDS = 16384  # values in one table or array

_UTC = datetime.UTC
_new_properties = Properties.__new__

# Basic.Properties flag bits, in wire order (pamqp's own table, so a pamqp that changed them is followed).
_F_CONTENT_TYPE = Properties.flags["content_type"]
_F_CONTENT_ENCODING = Properties.flags["content_encoding"]
_F_HEADERS = Properties.flags["headers"]
_F_DELIVERY_MODE = Properties.flags["delivery_mode"]
_F_PRIORITY = Properties.flags["priority"]
_F_CORRELATION_ID = Properties.flags["correlation_id"]
_F_REPLY_TO = Properties.flags["reply_to"]
_F_EXPIRATION = Properties.flags["expiration"]
_F_MESSAGE_ID = Properties.flags["message_id"]
_F_TIMESTAMP = Properties.flags["timestamp"]
_F_MESSAGE_TYPE = Properties.flags["message_type"]
_F_USER_ID = Properties.flags["user_id"]
_F_APP_ID = Properties.flags["app_id"]
_F_CLUSTER_ID = Properties.flags["cluster_id"]

# The codecs below spell out this layout field by field; a pamqp with another one must fail at import.
_LAYOUT = [
    ("content_type", "shortstr"),
    ("content_encoding", "shortstr"),
    ("headers", "table"),
    ("delivery_mode", "octet"),
    ("priority", "octet"),
    ("correlation_id", "shortstr"),
    ("reply_to", "shortstr"),
    ("expiration", "shortstr"),
    ("message_id", "shortstr"),
    ("timestamp", "timestamp"),
    ("message_type", "shortstr"),
    ("user_id", "shortstr"),
    ("app_id", "shortstr"),
    ("cluster_id", "shortstr"),
]
if [(name, Properties.amqp_type(name)) for name in Properties.__slots__] != _LAYOUT:
    raise ImportError("event.amqp.frames does not know this pamqp's Basic.Properties layout")


# --- protocol violations ------------------------------------------------------------------------------

# The reply codes of the hard errors a client can find in what the broker sends (AMQP 0-9-1, 1.8.3).
FRAME_ERROR = 501  # a frame that cannot be decoded, or larger than frame_max
SYNTAX_ERROR = 502  # a field with an illegal value
COMMAND_INVALID = 503  # a method that is not allowed here (a second Connection.Start, a confirm of nothing)
CHANNEL_ERROR = 504  # a frame for a channel that is not open
UNEXPECTED_FRAME = 505  # a frame out of sequence (a method where a content body was due)
NOT_ALLOWED = 530  # a negotiated value the client refuses (frame_max below 4096)

_CODE_NAMES = {
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    NOT_ALLOWED: "NOT_ALLOWED",
    541: "INTERNAL_ERROR",
}


class Violation(Exception):
    """The broker broke the protocol: the connection must close with ``reply_code`` (a hard error).

    Raised inside the receive path; the connection catches it, sends ``Connection.Close`` with the
    code and text, and fails everything pending with the same words."""

    def __init__(self, reply_code: int, detail: str) -> None:
        self.reply_code = reply_code
        self.reply_text = f"{_CODE_NAMES.get(reply_code, 'ERROR')} - {detail}"
        super().__init__(self.reply_text)


# --- decoding ------------------------------------------------------------------------------------------


def _short_str(buf: bytes | bytearray, at: int) -> tuple[str, int]:
    end = at + 1 + buf[at]
    if end > len(buf):
        raise ValueError("short string runs past the data")
    return buf[at + 1 : end].decode(), end


def decode_deliver(buf: bytes | bytearray, at: int, end: int) -> tuple[str, int, bool, str, str]:
    """``Basic.Deliver`` from its arguments at ``buf[at:end]`` (after the method id): consumer tag,
    delivery tag, redelivered, exchange, routing key."""
    n = buf[at]
    at += 1
    consumer_tag = buf[at : at + n].decode()
    at += n
    delivery_tag, bits = _TAG_BITS.unpack_from(buf, at)
    at += 9
    n = buf[at]
    at += 1
    exchange = buf[at : at + n].decode()
    at += n
    n = buf[at]
    at += 1
    routing_key = buf[at : at + n].decode()
    if at + n != end:
        raise ValueError("Basic.Deliver does not end where its frame does")
    return consumer_tag, delivery_tag, bool(bits & 1), exchange, routing_key


def decode_get_ok(buf: bytes | bytearray, at: int, end: int) -> tuple[int, bool, str, str, int]:
    """``Basic.GetOk`` from its arguments: delivery tag, redelivered, exchange, routing key, message count."""
    delivery_tag, bits = _TAG_BITS.unpack_from(buf, at)
    exchange, at = _short_str(buf, at + 9)
    routing_key, at = _short_str(buf, at)
    (message_count,) = _U32.unpack_from(buf, at)
    if at + 4 != end:
        raise ValueError("Basic.GetOk does not end where its frame does")
    return delivery_tag, bool(bits & 1), exchange, routing_key, message_count


def decode_ack(buf: bytes | bytearray, at: int, end: int) -> tuple[int, bool]:
    """``Basic.Ack`` from its arguments: delivery tag, multiple."""
    if at + 9 != end:
        raise ValueError("Basic.Ack is not 9 bytes long")
    tag, bits = _TAG_BITS.unpack_from(buf, at)
    return tag, bool(bits & 1)


def decode_nack(buf: bytes | bytearray, at: int, end: int) -> tuple[int, bool, bool]:
    """``Basic.Nack`` from its arguments: delivery tag, multiple, requeue."""
    if at + 9 != end:
        raise ValueError("Basic.Nack is not 9 bytes long")
    tag, bits = _TAG_BITS.unpack_from(buf, at)
    return tag, bool(bits & 1), bool(bits & 2)


def decode_return(buf: bytes | bytearray, at: int, end: int) -> tuple[int, str, str, str]:
    """``Basic.Return`` from its arguments: reply code, reply text, exchange, routing key."""
    (code,) = _RETURN_CODE.unpack_from(buf, at)
    text, at = _short_str(buf, at + 2)
    exchange, at = _short_str(buf, at)
    routing_key, at = _short_str(buf, at)
    if at != end:
        raise ValueError("Basic.Return does not end where its frame does")
    return code, text, exchange, routing_key


def decode_header(buf: bytes | bytearray, at: int, end: int) -> tuple[int, Properties]:
    """A content header at ``buf[at:end]``: the body size and the ``Basic.Properties`` (the very
    object pamqp builds for the same bytes)."""
    class_id, _, body_size, flags = _HEADER_START.unpack_from(buf, at)
    if class_id != spec.Basic.frame_id:
        raise ValueError(f"content header of class {class_id}, not Basic")
    if flags & 1:  # Basic's 14 properties fit in one flags word: a continuation is malformed
        raise ValueError("content header property flags with a continuation word")
    at += 14
    p = _new_properties(Properties)
    if flags & _F_CONTENT_TYPE:
        n = buf[at]
        p.content_type = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.content_type = None
    if flags & _F_CONTENT_ENCODING:
        n = buf[at]
        p.content_encoding = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.content_encoding = None
    if flags & _F_HEADERS:
        p.headers, at = _table(buf, at, 0)
    else:
        p.headers = None
    if flags & _F_DELIVERY_MODE:
        p.delivery_mode = buf[at]
        at += 1
    else:
        p.delivery_mode = None
    if flags & _F_PRIORITY:
        p.priority = buf[at]
        at += 1
    else:
        p.priority = None
    if flags & _F_CORRELATION_ID:
        n = buf[at]
        p.correlation_id = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.correlation_id = None
    if flags & _F_REPLY_TO:
        n = buf[at]
        p.reply_to = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.reply_to = None
    if flags & _F_EXPIRATION:
        n = buf[at]
        p.expiration = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.expiration = None
    if flags & _F_MESSAGE_ID:
        n = buf[at]
        p.message_id = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.message_id = None
    if flags & _F_TIMESTAMP:
        (stamp,) = _U64.unpack_from(buf, at)
        last = _last_decoded  # the usual case, the same second as the message before: no call
        p.timestamp = last[1] if stamp == last[0] else _decode_timestamp(stamp)
        at += 8
    else:
        p.timestamp = None
    if flags & _F_MESSAGE_TYPE:
        n = buf[at]
        p.message_type = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.message_type = None
    if flags & _F_USER_ID:
        n = buf[at]
        p.user_id = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.user_id = None
    if flags & _F_APP_ID:
        n = buf[at]
        p.app_id = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.app_id = None
    if flags & _F_CLUSTER_ID:
        n = buf[at]
        p.cluster_id = buf[at + 1 : at + 1 + n].decode()
        at += 1 + n
    else:
        p.cluster_id = ""  # pamqp's default for an absent cluster id
    if at != end:
        raise ValueError("content header properties do not end where the frame does")
    return body_size, p


# The last timestamp decoded, as (wire value, datetime): messages of the same second come in runs, and
# an aware ``fromtimestamp`` costs more than the rest of a content header. A datetime is immutable, so
# the messages of a run may share one.
_last_decoded = (-1, datetime.datetime.fromtimestamp(0, tz=_UTC))  # -1: no wire value


def _timestamp(buf: bytes | bytearray, at: int) -> datetime.datetime:
    (value,) = _U64.unpack_from(buf, at)
    last_value, last = _last_decoded
    if value == last_value:
        return last
    return _decode_timestamp(value)


def _decode_timestamp(value: int) -> datetime.datetime:
    global _last_decoded
    if value > 0xFFFFFFFF:  # pamqp reads a value past the year 2106 as milliseconds
        decoded = datetime.datetime.fromtimestamp(value / 1000.0, tz=_UTC)
    else:
        decoded = datetime.datetime.fromtimestamp(value, tz=_UTC)
    _last_decoded = (value, decoded)
    return decoded


def _table(buf: bytes | bytearray, at: int, depth: int) -> tuple[dict[str, Any], int]:
    """A field table at ``buf[at:]``: the table and the offset after it. ``depth``: tables and arrays
    around it."""
    if depth >= MAX_TABLE_DEPTH:
        raise ValueError(f"field tables nested deeper than {MAX_TABLE_DEPTH}")
    (length,) = _U32.unpack_from(buf, at)
    at += 4
    end = at + length
    if end > len(buf):
        raise ValueError("field table runs past the data")
    table: dict[str, Any] = {}
    depth += 1
    while at < end:
        n = buf[at]
        at += 1
        if at + n > end:
            raise ValueError("field table key runs past the table")
        key = buf[at : at + n].decode()
        table[key], at = _value(buf, at + n, depth)
    if at != end:
        raise ValueError("field table value runs past the table")
    if len(table) > MAX_TABLE_FIELDS:
        raise ValueError(f"a field table of more than {MAX_TABLE_FIELDS} values")
    return table, end


def _array(buf: bytes | bytearray, at: int, depth: int) -> tuple[list[Any], int]:
    if depth >= MAX_TABLE_DEPTH:
        raise ValueError(f"field tables nested deeper than {MAX_TABLE_DEPTH}")
    (length,) = _U32.unpack_from(buf, at)
    at += 4
    end = at + length
    if end > len(buf):
        raise ValueError("field array runs past the data")
    items: list[Any] = []
    depth += 1
    while at < end:
        value, at = _value(buf, at, depth)
        items.append(value)
    if len(items) > MAX_TABLE_FIELDS:
        raise ValueError(f"a field array of more than {MAX_TABLE_FIELDS} values")
    if at != end:
        raise ValueError("field array value runs past the array")
    return items, at


def _value(buf: bytes | bytearray, at: int, depth: int) -> tuple[Any, int]:
    """One typed field value (RabbitMQ's errata of the type letters, as pamqp reads them)."""
    kind = buf[at]
    at += 1
    if kind == 0x53:  # S: long string, bytes if not UTF-8
        (n,) = _U32.unpack_from(buf, at)
        at += 4
        if at + n > len(buf):
            raise ValueError("long string runs past the data")
        raw = bytes(buf[at : at + n])
        try:
            return raw.decode(), at + n
        except UnicodeDecodeError:
            return raw, at + n
    if kind == 0x49:  # I: signed 32
        return _I.unpack_from(buf, at)[0], at + 4
    if kind == 0x6C or kind == 0x4C:  # l, L: signed 64 (pamqp reads L signed too)
        return _Q.unpack_from(buf, at)[0], at + 8
    if kind == 0x74:  # t: boolean
        return bool(_U8.unpack_from(buf, at)[0]), at + 1
    if kind == 0x62:  # b: signed 8
        return _B.unpack_from(buf, at)[0], at + 1
    if kind == 0x42:  # B: unsigned 8
        return _U8.unpack_from(buf, at)[0], at + 1
    if kind == 0x73:  # s: signed 16
        return _S.unpack_from(buf, at)[0], at + 2
    if kind == 0x75:  # u: unsigned 16
        return _U16.unpack_from(buf, at)[0], at + 2
    if kind == 0x69:  # i: unsigned 32
        return _U32.unpack_from(buf, at)[0], at + 4
    if kind == 0x46:  # F: table
        return _table(buf, at, depth)
    if kind == 0x41:  # A: array
        return _array(buf, at, depth)
    if kind == 0x54:  # T: timestamp
        return _timestamp(buf, at), at + 8
    if kind == 0x66:  # f: float
        return _F.unpack_from(buf, at)[0], at + 4
    if kind == 0x64:  # d: double
        return _D.unpack_from(buf, at)[0], at + 8
    if kind == 0x44:  # D: decimal (pamqp reads the mantissa signed)
        scale, raw_mantissa = _DECIMAL.unpack_from(buf, at)
        return decimal.Decimal(raw_mantissa) * (decimal.Decimal(10) ** -scale), at + 5
    if kind == 0x56 or kind == 0:  # V: void (and a zero type octet, seen in the wild)
        return None, at
    if kind == 0x78:  # x: byte array
        (n,) = _U32.unpack_from(buf, at)
        at += 4
        if at + n > len(buf):
            raise ValueError("byte array runs past the data")
        return bytearray(buf[at : at + n]), at + n
    raise ValueError(f"unknown field type {bytes([kind])!r}")


# --- encoding ------------------------------------------------------------------------------------------

_PUBLISH_HEAD = struct.Struct(">BHIIH")  # frame type, channel, size, method id, reserved short
_CONTENT_HEAD = struct.Struct(">BHIHHQH")  # frame type, channel, size, class, weight, body size, flags
_BODY_HEAD = struct.Struct(">BHI")
_END = bytes([FRAME_END])
_ACK_FRAME = struct.Struct(">BHIIQBB")  # type, channel, size, method id, tag, bits, frame end
_PUBLISH = spec.Basic.Publish.index
_REJECT = spec.Basic.Reject.index
_BASIC = spec.Basic.frame_id


def _short(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"short string exceeds 255 bytes: {value[:40]!r}...")
    return _U8.pack(len(raw)) + raw


def encode_properties(p: Properties) -> tuple[int, bytes]:
    """The property flags and bytes of ``p`` in a content header, byte for byte as pamqp writes them
    (a property that is ``None`` or ``''`` is left out)."""
    flags = 0
    parts: list[bytes] = []
    value: Any = p.content_type
    if value is not None and value != "":
        flags |= _F_CONTENT_TYPE
        parts.append(_short(value))
    value = p.content_encoding
    if value is not None and value != "":
        flags |= _F_CONTENT_ENCODING
        parts.append(_short(value))
    value = p.headers
    if value is not None:
        flags |= _F_HEADERS
        parts.append(encode_table(value))
    value = p.delivery_mode
    if value is not None:
        flags |= _F_DELIVERY_MODE
        parts.append(_U8.pack(value))
    value = p.priority
    if value is not None:
        flags |= _F_PRIORITY
        parts.append(_U8.pack(value))
    value = p.correlation_id
    if value is not None and value != "":
        flags |= _F_CORRELATION_ID
        parts.append(_short(value))
    value = p.reply_to
    if value is not None and value != "":
        flags |= _F_REPLY_TO
        parts.append(_short(value))
    value = p.expiration
    if value is not None and value != "":
        flags |= _F_EXPIRATION
        parts.append(_short(value))
    value = p.message_id
    if value is not None and value != "":
        flags |= _F_MESSAGE_ID
        parts.append(_short(value))
    value = p.timestamp
    if value is not None:
        flags |= _F_TIMESTAMP
        parts.append(_encode_timestamp(value))
    value = p.message_type
    if value is not None and value != "":
        flags |= _F_MESSAGE_TYPE
        parts.append(_short(value))
    value = p.user_id
    if value is not None and value != "":
        flags |= _F_USER_ID
        parts.append(_short(value))
    value = p.app_id
    if value is not None and value != "":
        flags |= _F_APP_ID
        parts.append(_short(value))
    value = p.cluster_id
    if value is not None and value != "":
        flags |= _F_CLUSTER_ID
        parts.append(_short(value))
    return flags, b"".join(parts)


# The last datetime encoded and its bytes: event's publishes of one second share one datetime object.
_last_timestamp: tuple[object, bytes] = (None, b"")


def _encode_timestamp(value: datetime.datetime | time.struct_time) -> bytes:
    global _last_timestamp
    last = _last_timestamp
    if value is last[0]:
        return last[1]
    if isinstance(value, datetime.datetime):
        given = value
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            value = value.replace(tzinfo=_UTC)  # pamqp takes a naive datetime as UTC
        encoded = _U64.pack(int(value.timestamp()))
        _last_timestamp = (given, encoded)  # immutable: the same object always encodes the same
        return encoded
    if isinstance(value, time.struct_time):
        return _U64.pack(calendar.timegm(value))
    raise TypeError(f"datetime.datetime or time.struct_time required, received {type(value)}")


def encode_table(table: Any) -> bytes:
    """A field table as pamqp writes it: keys sorted, integers in the smallest type that holds them."""
    if not table:
        return b"\x00\x00\x00\x00"
    if not isinstance(table, dict):
        raise TypeError(f"dict required, received {type(table)}")
    parts: list[bytes] = []
    for key, item in sorted(table.items()):
        raw = key.encode()
        if len(raw) > 128:  # pamqp truncates a field name to 128 bytes
            raw = raw[:128].decode("utf-8", "ignore").encode()
        parts.append(_U8.pack(len(raw)) + raw)
        parts.append(_encode_value(item))
    data = b"".join(parts)
    return _U32.pack(len(data)) + data


def _encode_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -128 <= value <= 127:
            return b"b" + _B.pack(value)
        if -32768 <= value <= 32767:
            return b"s" + _S.pack(value)
        if 0 <= value <= 65535:
            return b"u" + _U16.pack(value)
        if -2147483648 <= value <= 2147483647:
            return b"I" + _I.pack(value)
        if 0 <= value <= 4294967295:
            return b"i" + _U32.pack(value)
        if -9223372036854775808 <= value <= 9223372036854775807:
            return b"l" + _Q.pack(value)
        raise TypeError(f"Unsupported numeric value: {value}")
    if isinstance(value, str):
        raw = value.encode()
        return b"S" + _U32.pack(len(raw)) + raw
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    if isinstance(value, list):
        data = b"".join(_encode_value(item) for item in value)
        return b"A" + _U32.pack(len(data)) + data
    if isinstance(value, datetime.datetime | time.struct_time):
        return b"T" + _encode_timestamp(value)
    if value is None:
        return b"V"
    # Floats (pamqp writes them single precision), decimals, byte arrays: pamqp's own encoder, rare here.
    return pamqp.encode.encode_table_value(value)


def encode_publish_method(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The ``Basic.Publish`` method frame (the same for every message to one exchange and routing key,
    so a channel keeps it)."""
    ex = exchange.encode()
    rk = routing_key.encode()
    if len(ex) > 255 or len(rk) > 255:
        raise ValueError("an exchange name or routing key exceeds 255 bytes")
    head = _PUBLISH_HEAD.pack(FRAME_METHOD, channel, 9 + len(ex) + len(rk), _PUBLISH, 0)
    tail = b"\x01\xce" if mandatory else b"\x00\xce"
    return b"".join((head, _U8.pack(len(ex)), ex, _U8.pack(len(rk)), rk, tail))


# From this many bytes of body on, a publish writes the body's own bytes (encode_content_parts) rather than
# a copy joined with its frames: below it a join costs less than handing the transport several pieces.
LARGE_BODY = 64 * 1024


def _content_header(channel: int, properties: Properties | None, size: int) -> bytes:
    if properties is None:
        flags, props = 0, b""
    else:
        flags, props = encode_properties(properties)
    return _CONTENT_HEAD.pack(FRAME_HEADER, channel, 14 + len(props), _BASIC, 0, size, flags) + props


def encode_content_parts(
    channel: int, properties: Properties | None, body: bytes, frame_max: int
) -> list[bytes | memoryview]:
    """The content header and body frames of one message, as pieces to write one after the other:
    the body is in them by reference (itself, or ``memoryview`` slices of at most ``frame_max`` less
    the frame's 8 bytes), between the small pieces of frame end and frame header.

    ``b"".join`` of the pieces is :func:`encode_content`'s bytes."""
    if type(body) is not bytes:
        # A bytearray under a memoryview cannot be resized until it is written, and a caller may
        # change it meanwhile: the pieces hold an immutable copy instead.
        body = bytes(body)
    size = len(body)
    lead = _content_header(channel, properties, size) + _END
    chunk = frame_max - FRAME_OVERHEAD
    if size <= chunk:
        if not size:
            return [lead]
        return [lead + _BODY_HEAD.pack(FRAME_BODY, channel, size), body, _END]
    parts: list[bytes | memoryview] = []
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        parts += (lead + _BODY_HEAD.pack(FRAME_BODY, channel, len(piece)), piece)
        lead = _END
    parts.append(_END)
    return parts


def encode_content(channel: int, properties: Properties | None, body: bytes, frame_max: int) -> bytes:
    """The content header and body frames (of at most ``frame_max`` bytes each) of one message."""
    size = len(body)
    if properties is None:
        flags, props = 0, b""
    else:
        flags, props = encode_properties(properties)
    header = _CONTENT_HEAD.pack(FRAME_HEADER, channel, 14 + len(props), _BASIC, 0, size, flags)
    chunk = frame_max - FRAME_OVERHEAD
    if size <= chunk:
        if size:
            return b"".join((header, props, _END, _BODY_HEAD.pack(FRAME_BODY, channel, size), body, _END))
        return b"".join((header, props, _END))
    parts: list[bytes | memoryview] = [header, props, _END]
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        parts += (_BODY_HEAD.pack(FRAME_BODY, channel, len(piece)), piece, _END)
    return b"".join(parts)


def encode_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: Properties | None,
    body: bytes,
    frame_max: int,
) -> bytes:
    """``Basic.Publish``, its content header and body frames, as one string of bytes for the socket."""
    return encode_publish_method(channel, exchange, routing_key, mandatory) + encode_content(
        channel, properties, body, frame_max
    )


def encode_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    """``Basic.Ack`` of a delivery."""
    return _ACK_FRAME.pack(FRAME_METHOD, channel, 13, ACK, delivery_tag, multiple, FRAME_END)


def encode_nack(channel: int, delivery_tag: int, multiple: bool, requeue: bool) -> bytes:
    """``Basic.Nack`` of a delivery."""
    return _ACK_FRAME.pack(FRAME_METHOD, channel, 13, NACK, delivery_tag, multiple | requeue << 1, FRAME_END)


def encode_reject(channel: int, delivery_tag: int, requeue: bool) -> bytes:
    """``Basic.Reject`` of a delivery."""
    return _ACK_FRAME.pack(FRAME_METHOD, channel, 13, _REJECT, delivery_tag, requeue, FRAME_END)
