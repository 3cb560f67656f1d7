"""Protobuf payloads: a handler typed with a protobuf message class, and the publishing of such messages.

A consumer declares a generated message class as its payload type (``msg: Message[Order]``, or a third
parameter ``payload: Order``), as it would a dataclass. The body is read by its content type:

- ``application/x-protobuf`` (or ``application/protobuf``): protobuf's binary wire format;
- ``application/json``, or no content type (Hutch's JSON): protobuf's JSON mapping (``json_format``),
  so a Ruby service that publishes JSON keeps working. Fields the message does not know are ignored,
  as for the other payload types, so publishers can add fields first.

A body that does not parse raises :class:`event.DecodeError`, JSON that does not fit the message
:class:`event.ValidationError`, each naming the message type and the parse error; the message goes to
the dead queue at once, with that reason in ``event-error``.

Publishing a protobuf message sends its binary form with content type ``application/x-protobuf``. To
send JSON instead (to a consumer that reads only JSON, such as a Hutch consumer in Ruby), publish
:func:`to_json` of the message, or declare the contract with ``content_type="application/json"``.

``protobuf`` is an extra (``pip install "rabbit-event[protobuf]"``) that this module never imports
unless a payload is a protobuf message: such a class exists only once its generated module has
imported ``google.protobuf``, so ``sys.modules`` answers "is this a protobuf message?" at the cost of
a dictionary look-up, and without importing anything when protobuf is not installed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from event import wire
from event.errors import DecodeError, ValidationError

if TYPE_CHECKING:
    from google.protobuf.message import Message as ProtoMessage

CONTENT_TYPE = "application/x-protobuf"
"""The content type of a protobuf message published in its binary form."""

BINARY_CONTENT_TYPES = frozenset((CONTENT_TYPE, "application/protobuf", "application/vnd.google.protobuf"))
"""Content types read as protobuf's binary form: the customary one, and those other clients send."""

JSON_CONTENT_TYPES = frozenset((wire.CONTENT_TYPE, ""))  # "": no content type, read as Hutch's JSON

_MESSAGE_MODULE = "google.protobuf.message"


def is_message_type(value: object) -> bool:
    """Whether ``value`` is a protobuf message class (a generated one, or one made by a message factory)."""
    module = sys.modules.get(_MESSAGE_MODULE)
    return module is not None and isinstance(value, type) and issubclass(value, module.Message)


def is_message(value: object) -> bool:
    """Whether ``value`` is a protobuf message."""
    module = sys.modules.get(_MESSAGE_MODULE)
    return module is not None and isinstance(value, module.Message)


def type_name(cls: type[ProtoMessage]) -> str:
    """The message's full protobuf name, e.g. ``shop.Order``: what errors and documents call it."""
    return str(cls.DESCRIPTOR.full_name)


def encode(routing_key: str, message: ProtoMessage) -> bytes:
    """``message`` in protobuf's binary form; a :class:`TypeError` naming the routing key when it cannot be
    (a proto2 message missing a required field)."""
    try:
        return message.SerializeToString()
    except Exception as exc:  # google.protobuf.message.EncodeError, without importing it up front
        raise TypeError(
            f"payload for {routing_key!r} cannot be serialised as {type_name(type(message))}: {exc}"
        ) from exc


def to_json(message: ProtoMessage, *, proto_names: bool = False) -> dict[str, Any]:
    """``message`` in protobuf's JSON mapping, as a dict that publishes as a JSON body.

    Field names are the mapping's lowerCamelCase ones (``orderId``), or the ``.proto`` ones
    (``order_id``) with ``proto_names=True``; a consumer typed with the message reads either.
    """
    from google.protobuf import json_format

    converted: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
    return converted


def converter(cls: type[ProtoMessage]) -> Callable[[Any], Any]:
    """A function turning a decoded JSON body into a ``cls`` message, raising :class:`ValidationError`."""
    name = type_name(cls)

    def convert(body: Any) -> Any:
        from google.protobuf import json_format

        if not isinstance(body, dict):
            raise ValidationError(f"payload: expected a JSON object for the {name} protobuf message")
        try:
            return json_format.ParseDict(body, cls(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise ValidationError(f"payload does not fit the {name} protobuf message: {exc}") from exc

    return convert


def loader(cls: type[ProtoMessage]) -> Callable[[bytes, str | None], Any]:
    """A function reading a delivery's body (bytes, content type) into a ``cls`` message, by content type.

    Raises :class:`DecodeError` for a body that does not parse or a content type it does not read, and
    :class:`ValidationError` for JSON that does not fit the message.
    """
    name = type_name(cls)
    convert = converter(cls)

    def load(raw: bytes, content_type: str | None) -> Any:
        media = wire.media_type(content_type)
        if media in BINARY_CONTENT_TYPES:
            try:
                return cls.FromString(raw)
            except Exception as exc:  # google.protobuf.message.DecodeError, and upb's RuntimeErrors
                raise DecodeError(
                    f"body is not a valid {name} protobuf message ({exc}); it starts with {raw[:40]!r}"
                ) from exc
        if media not in JSON_CONTENT_TYPES:
            raise DecodeError(
                f"content type {content_type!r} is neither {CONTENT_TYPE} nor {wire.CONTENT_TYPE}, "
                f"the two that {name} protobuf messages are read from"
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(
                f"body is not valid JSON ({exc}) for the {name} protobuf message; it starts with {raw[:40]!r}"
            ) from exc
        return convert(body)

    return load


def json_schema(cls: type[ProtoMessage]) -> dict[str, Any]:
    """A JSON Schema of ``cls`` in protobuf's JSON mapping (for the AsyncAPI document), nested inline."""
    return _message_schema(cls.DESCRIPTOR, set())


def _message_schema(descriptor: Any, seen: set[str]) -> dict[str, Any]:
    if descriptor.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[descriptor.full_name])
    if descriptor.full_name in seen:  # a recursive message: the inner one is any object
        return {"type": "object"}
    seen = seen | {descriptor.full_name}
    properties = {}
    for field in descriptor.fields:
        schema = _field_schema(field, seen)
        if _is_repeated(field) and not _is_map(field):
            schema = {"type": "array", "items": schema}
        properties[field.json_name] = schema
    return {"type": "object", "title": descriptor.full_name, "properties": properties}


def _is_repeated(field: Any) -> bool:
    # FieldDescriptor.label is deprecated in recent protobuf releases, in favour of is_repeated
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else bool(field.label == field.LABEL_REPEATED)


def _is_map(field: Any) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


# protobuf's JSON mapping, by FieldDescriptor.type (descriptor.proto's numbers): 64-bit integers are
# strings, bytes base64 strings; enums are their value names (below).
_SCALARS: dict[int, dict[str, Any]] = {
    1: {"type": "number"},  # double
    2: {"type": "number"},  # float
    3: {"type": "string", "format": "int64"},  # int64
    4: {"type": "string", "format": "uint64"},  # uint64
    5: {"type": "integer", "format": "int32"},  # int32
    6: {"type": "string", "format": "uint64"},  # fixed64
    7: {"type": "integer", "format": "uint32"},  # fixed32
    8: {"type": "boolean"},  # bool
    9: {"type": "string"},  # string
    12: {"type": "string", "contentEncoding": "base64"},  # bytes
    13: {"type": "integer", "format": "uint32"},  # uint32
    15: {"type": "integer", "format": "int32"},  # sfixed32
    16: {"type": "string", "format": "int64"},  # sfixed64
    17: {"type": "integer", "format": "int32"},  # sint32
    18: {"type": "string", "format": "int64"},  # sint64
}

# Well-known types have JSON forms of their own.
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {"type": "object"},
    "google.protobuf.Empty": {"type": "object"},
    **{f"google.protobuf.{kind}Value": {"type": "string"} for kind in ("String", "Bytes", "Int64", "UInt64")},
    **{f"google.protobuf.{kind}Value": {"type": "number"} for kind in ("Double", "Float")},
    **{f"google.protobuf.{kind}Value": {"type": "integer"} for kind in ("Int32", "UInt32")},
    "google.protobuf.BoolValue": {"type": "boolean"},
}


def _field_schema(field: Any, seen: set[str]) -> dict[str, Any]:
    if _is_map(field):
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, seen)}
    if field.message_type is not None:
        return _message_schema(field.message_type, seen)
    if field.enum_type is not None:
        return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
    return dict(_SCALARS.get(field.type, {}))
