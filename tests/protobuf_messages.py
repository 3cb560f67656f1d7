"""Protobuf message classes for the tests, built from a descriptor at import: no protoc, no generated file.

They are what protoc would generate from this ``shop.proto``::

    syntax = "proto3";
    package eventtest.shop;

    message Item {
      string sku = 1;
      int32 quantity = 2;
    }

    message Order {
      enum Status { STATUS_UNSPECIFIED = 0; PAID = 1; SHIPPED = 2; }
      string order_id = 1;
      int64 total_cents = 2;
      repeated Item items = 3;
      Status status = 4;
      map<string, string> labels = 5;
    }
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _build() -> descriptor_pool.DescriptorPool:
    proto = descriptor_pb2.FileDescriptorProto(
        name="eventtest/shop.proto", package="eventtest.shop", syntax="proto3"
    )
    item = proto.message_type.add(name="Item")
    item.field.add(name="sku", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="sku")
    item.field.add(
        name="quantity", number=2, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL, json_name="quantity"
    )
    order = proto.message_type.add(name="Order")
    status = order.enum_type.add(name="Status")
    for number, name in enumerate(("STATUS_UNSPECIFIED", "PAID", "SHIPPED")):
        status.value.add(name=name, number=number)
    labels = order.nested_type.add(name="LabelsEntry")
    labels.options.map_entry = True
    labels.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="key")
    labels.field.add(name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="value")
    fields: list[dict[str, Any]] = [
        {"name": "order_id", "number": 1, "type": _F.TYPE_STRING, "json_name": "orderId"},
        {"name": "total_cents", "number": 2, "type": _F.TYPE_INT64, "json_name": "totalCents"},
        {
            "name": "items",
            "number": 3,
            "type": _F.TYPE_MESSAGE,
            "type_name": ".eventtest.shop.Item",
            "json_name": "items",
            "label": _F.LABEL_REPEATED,
        },
        {
            "name": "status",
            "number": 4,
            "type": _F.TYPE_ENUM,
            "type_name": ".eventtest.shop.Order.Status",
            "json_name": "status",
        },
        {
            "name": "labels",
            "number": 5,
            "type": _F.TYPE_MESSAGE,
            "type_name": ".eventtest.shop.Order.LabelsEntry",
            "json_name": "labels",
            "label": _F.LABEL_REPEATED,
        },
    ]
    for field in fields:
        order.field.add(**{"label": _F.LABEL_OPTIONAL, **field})
    pool = descriptor_pool.DescriptorPool()  # not the default pool: importing twice cannot clash
    pool.Add(proto)
    return pool


_POOL = _build()
Item: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("eventtest.shop.Item"))
Order: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("eventtest.shop.Order"))
