"""event asyncapi: the document of a pool and its contracts is valid AsyncAPI 3.0 and names every payload."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from event import asyncapi, cli

SPEC = Path(__file__).resolve().parents[1] / "asyncapi_spec"
ROOT = SPEC.parents[1]
VALIDATOR = jsonschema.Draft7Validator(json.loads((SPEC / "asyncapi-3.0.0.schema.json").read_text()))


def validate(doc: dict[str, Any]) -> None:
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def run(target: str, *options: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = cli.main(["asyncapi", target, *options])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture
def shop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SPEC))


def resolve(doc: dict[str, Any], ref: str) -> Any:
    found: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return found


def payload_validator(doc: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    """A validator of one message's payload, its references resolved within the document."""
    schema = {**doc["components"]["messages"][message]["payload"], "components": doc["components"]}
    return jsonschema.Draft7Validator(schema)


def test_the_demo_example_is_valid_asyncapi(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.chdir(ROOT)
    doc = json.loads(run("examples.demo:pool", capsys=capsys))
    validate(doc)
    assert doc["asyncapi"] == "3.0.0"
    assert {op["channel"]["$ref"] for op in doc["operations"].values()} == {
        "#/channels/app.send_email",
        "#/channels/app.user.star",
        "#/channels/app.heartbeat",
    }
    mail = doc["components"]["schemas"]["Mail"]
    assert mail["required"] == ["user"] and set(mail["properties"]) == {"user", "bounce"}


def test_each_consumer_and_each_contract_appears_with_its_schema(shop: None, capsys: Any) -> None:
    from shop_app import pool
    from shop_contracts import ORDER_PLACED, REFUND, SIGNUP

    doc = json.loads(run("shop_app:pool", "--json", capsys=capsys))
    validate(doc)
    operations = doc["operations"]
    receiving = {
        op["x-event-consumer"]["queue"]: op for op in operations.values() if op["action"] == "receive"
    }
    assert set(receiving) == {consumer.queue for consumer in pool.consumers}
    for consumer in pool.consumers:  # a receive operation per routing key of each consumer
        channels = [
            op["channel"]["$ref"]
            for op in operations.values()
            if op.get("x-event-consumer", {}).get("queue") == consumer.queue
        ]
        assert sorted(resolve(doc, ref)["address"] for ref in channels) == sorted(consumer.routing_keys)
    sending = {
        resolve(doc, op["channel"]["$ref"])["address"]: op
        for op in operations.values()
        if op["action"] == "send"
    }
    assert set(sending) == {"shop.order.placed", "shop.refund", "shop.user.signup", "shop.report.nightly"}

    for contract, name in ((ORDER_PLACED, "OrderPlaced"), (REFUND, "Refund"), (SIGNUP, "Signup")):
        (send_ref,) = sending[contract.routing_key]["messages"]
        (receive_ref,) = next(
            op["messages"]
            for op in receiving.values()
            if resolve(doc, op["channel"]["$ref"])["address"] == contract.routing_key
        )
        assert (
            resolve(doc, send_ref["$ref"])
            == resolve(doc, receive_ref["$ref"])
            == {"$ref": f"#/components/messages/{name}"}
        )
        assert doc["components"]["messages"][name]["payload"] == {"$ref": f"#/components/schemas/{name}"}
    assert sending["shop.order.placed"]["summary"] == "An order was placed and paid."

    order = payload_validator(doc, "OrderPlaced")
    good = {"order_id": 1, "items": ["book"], "ship_to": {"street": "1 Main St", "city": "Oslo"}}
    assert order.is_valid(good)
    assert not order.is_valid({**good, "ship_to": {"street": "1 Main St"}})  # a nested field missing
    assert not order.is_valid({"order_id": "1", "items": [], "ship_to": good["ship_to"]})
    refund = payload_validator(doc, "Refund")
    assert refund.is_valid({"order_id": 1, "amount": 2.5, "reason": "late"})
    assert not refund.is_valid({"order_id": 1, "amount": 2.5, "reason": "bored"})
    signup = payload_validator(doc, "Signup")
    assert signup.is_valid({"email": "a@b.c"}) and not signup.is_valid({"referrer": "x"})
    assert doc["components"]["messages"]["AnyJson"]["payload"] == {}  # the untyped audit consumer


def test_the_failure_policy_and_the_exchange_are_described(shop: None, capsys: Any) -> None:
    doc = yaml.safe_load(run("shop_app:pool", "--yaml", capsys=capsys))
    validate(doc)
    ship = doc["operations"]["receive_shop_ship"]
    assert (
        ship["x-event-consumer"]["retries"] == 5
        and ship["x-event-consumer"]["deadQueue"] == "shop:hutch_dead_queue"
    )
    assert (
        "retried 5 time(s)" in ship["description"]
        and "waits of [5, 5, 20, 120, 300] s" in ship["description"]
    )
    assert "over 30 s is cancelled" in ship["description"]
    assert "the back-off" in doc["operations"]["receive_shop_audit_1"]["description"]
    binding = doc["channels"]["shop.order.placed"]["bindings"]["amqp"]
    assert binding["exchange"] == {
        "name": "hutch",
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "shop",
    }
    assert doc["servers"] == {
        "broker": {
            "host": "rabbit.internal:5672",
            "pathname": "shop",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
        }
    }
    assert "secret" not in json.dumps(doc)


def test_a_contracts_module_alone_gives_the_send_side(shop: None, capsys: Any) -> None:
    doc = json.loads(run("shop_contracts", capsys=capsys))
    validate(doc)
    assert {op["action"] for op in doc["operations"].values()} == {"send"}
    assert set(doc["components"]["messages"]) == {"OrderPlaced", "Refund", "Signup"}
    assert "servers" not in doc


def test_a_target_without_anything_to_describe_is_a_usage_error(capsys: Any) -> None:
    assert cli.main(["asyncapi", "json"]) == cli.EXIT_USAGE
    assert "no consumers, schedules or contracts" in capsys.readouterr().err


@dataclass
class Parcel:
    weight: float
    label: str | None
    sizes: list[int]


class Note(TypedDict):
    text: str


@given(
    weight=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.text(), st.none()),
    label=st.one_of(st.text(), st.none(), st.integers()),
    sizes=st.one_of(st.lists(st.integers()), st.lists(st.text(), min_size=1)),
)
def test_the_schema_without_pydantic_accepts_what_the_payload_check_accepts(
    weight: Any, label: Any, sizes: Any
) -> None:
    from event.errors import ValidationError
    from event.payloads import converter

    body = {"weight": weight, "label": label, "sizes": sizes}
    try:
        converter(Parcel)(dict(body))
        accepted = True
    except ValidationError:
        accepted = False
    assert jsonschema.Draft7Validator(asyncapi.basic_schema(Parcel)).is_valid(body) == accepted


def test_the_schema_without_pydantic_names_required_fields() -> None:
    assert asyncapi.basic_schema(Note) == {
        "title": "Note",
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    }
