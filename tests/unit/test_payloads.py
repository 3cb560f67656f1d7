"""Typed payloads: detection from the handler's signature, conversion, and errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from event import ConfigurationError, Message, ValidationError
from event.payloads import converter, payload_spec
from event.publisher import encode
from event.ratelimit import RateLimit, RateLimiter, parse_rate


@dataclass
class Address:
    city: str
    zip: str | None = None


@dataclass
class SendEmail:
    to: str
    subject: str
    priority: int = 1
    tags: list[str] = field(default_factory=list)
    address: Address | None = None
    kind: Literal["plain", "html"] = "plain"


class Signup(TypedDict):
    user_id: int
    email: str


class Invoice(pydantic.BaseModel):
    number: int
    amount: float


def test_dataclass_body_is_converted_with_nested_and_defaults() -> None:
    convert = converter(SendEmail)
    body = {"to": "a@b.c", "subject": "hi", "tags": ["x"], "address": {"city": "Berlin"}, "extra": 1}
    assert convert(body) == SendEmail("a@b.c", "hi", 1, ["x"], Address("Berlin"), "plain")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"subject": "hi"}, "field 'to': missing"),
        ({"to": 5, "subject": "hi"}, "field 'to': expected str, got a number"),
        ({"to": "a", "subject": "s", "priority": True}, "field 'priority': expected int, got a boolean"),
        ({"to": "a", "subject": "s", "tags": "x"}, "field 'tags': expected a list, got a string"),
        ({"to": "a", "subject": "s", "tags": [1]}, r"field 'tags\[0\]': expected str"),
        ({"to": "a", "subject": "s", "address": {}}, "field 'address.city': missing"),
        ({"to": "a", "subject": "s", "kind": "pdf"}, "field 'kind': 'pdf' is not one of"),
        (["not", "an", "object"], "expected a JSON object for SendEmail, got a list"),
    ],
)
def test_dataclass_errors_name_the_field(body: Any, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        converter(SendEmail)(body)


def test_all_field_errors_are_reported_together() -> None:
    with pytest.raises(ValidationError) as caught:
        converter(SendEmail)({"priority": "high"})
    assert "field 'to': missing" in str(caught.value)
    assert "field 'subject': missing" in str(caught.value)
    assert "field 'priority': expected int" in str(caught.value)


def test_typeddict_stays_a_checked_dict() -> None:
    assert converter(Signup)({"user_id": 1, "email": "e"}) == {"user_id": 1, "email": "e"}
    with pytest.raises(ValidationError, match="field 'email': missing"):
        converter(Signup)({"user_id": 1})


def test_pydantic_models_validate_with_their_own_rules() -> None:
    assert converter(Invoice)({"number": 7, "amount": "12.5"}) == Invoice(number=7, amount=12.5)
    with pytest.raises(ValidationError, match="field 'amount'"):
        converter(Invoice)({"number": 7, "amount": "lots"})


def test_payload_type_is_read_from_message_generic_or_payload_parameter() -> None:
    async def generic(ctx: object, msg: Message[SendEmail]) -> None: ...

    async def third(ctx: object, msg: Message[Any], payload: Signup) -> None: ...

    async def untyped(ctx: object, msg: Message[Any]) -> None: ...

    async def bare(ctx, msg):  # type: ignore[no-untyped-def]
        ...

    generic_spec, third_spec = payload_spec(generic), payload_spec(third)
    assert generic_spec is not None and (generic_spec.type, generic_spec.as_argument) == (SendEmail, False)
    assert third_spec is not None and (third_spec.type, third_spec.as_argument) == (Signup, True)
    assert payload_spec(untyped) is None
    assert payload_spec(bare) is None


def test_an_unsupported_payload_type_is_a_configuration_error() -> None:
    async def handler(ctx: object, msg: Message[set[int]]) -> None: ...

    with pytest.raises(
        ConfigurationError, match="not a dataclass, a TypedDict, a pydantic model or a protobuf message"
    ):
        payload_spec(handler)


def test_publishing_accepts_the_same_types() -> None:
    assert encode("app.a", SendEmail("a", "s")) == (
        b'{"to":"a","subject":"s","priority":1,"tags":[],"address":null,"kind":"plain"}'
    )
    assert encode("app.a", Invoice(number=1, amount=2.0)) == b'{"number":1,"amount":2.0}'
    with pytest.raises(TypeError, match=r"'app\.a'"):
        encode("app.a", object())


def test_rate_limit_parsing() -> None:
    assert parse_rate("30/s").per_second == 30
    assert parse_rate("120/m").per_second == 2
    assert parse_rate("3600/h", burst=5) == parse_rate("1/s", burst=5)
    for bad in ("30", "30/d", "0/s", "-1/s", "fast"):
        with pytest.raises(ConfigurationError, match="rate_limit"):
            parse_rate(bad)
    with pytest.raises(ConfigurationError, match="rate_burst"):
        parse_rate("1/s", burst=0)


def test_rate_limiter_spaces_callers_and_allows_a_burst() -> None:
    now = [100.0]
    limiter = RateLimiter(parse_rate("10/s", burst=3), clock=lambda: now[0])
    waits = [limiter.reserve() for _ in range(6)]
    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])
    now[0] += 10  # a quiet spell refills the burst
    assert [limiter.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])


def test_a_clock_set_back_does_not_hold_the_rate_limiter_for_that_long() -> None:
    now = [10_000.0]
    limiter = RateLimiter(parse_rate("1/s"), clock=lambda: now[0])
    assert limiter.reserve() == 0
    now[0] -= 3600  # the wall clock is set back an hour
    assert limiter.reserve() <= 1.0
    assert limiter.reserve() == pytest.approx(limiter.interval * 2)  # and the line goes on from there


@settings(max_examples=examples(200), deadline=None)
@given(
    per_second=st.sampled_from([0.5, 1.0, 10.0, 30.0]),
    burst=st.integers(1, 4),
    steps=st.lists(st.one_of(st.none(), st.floats(0, 5)), max_size=40),
)
def test_on_a_steady_clock_the_limiter_is_plain_gcra(
    per_second: float, burst: int, steps: list[float | None]
) -> None:
    now = [1_000.0]
    limit = RateLimit(per_second, burst)
    limiter = RateLimiter(limit, clock=lambda: now[0])
    interval, slack, tat = 1 / per_second, (burst - 1) / per_second, 0.0  # the textbook algorithm
    for step in steps:
        if step is not None:
            now[0] += step  # the clock only moves forward
            continue
        arrival = max(tat, now[0])
        tat = arrival + interval
        assert limiter.reserve() == pytest.approx(max(0.0, arrival - slack - now[0]))


def test_a_payload_type_that_cannot_be_resolved_is_named() -> None:
    namespace: dict[str, Any] = {}
    exec(
        "from __future__ import annotations\n"
        "from event import Message\n"
        "def make():\n"
        "    class Local:\n"
        "        pass\n"
        "    async def handler(ctx, msg: Message[Local]) -> None: ...\n"
        "    return handler\n",
        namespace,
    )
    with pytest.raises(ConfigurationError, match="cannot resolve the annotation 'Message\\[Local\\]'"):
        payload_spec(namespace["make"]())


def test_a_local_context_class_does_not_matter() -> None:
    class LocalContext:
        pass

    async def handler(ctx: LocalContext, msg: Message[Any]) -> None: ...

    assert payload_spec(handler) is None
