"""The dead queue's filter and message keys, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="the serve extra (starlette) is missing")

from event import wire
from event.dead import DeadMessage
from event.gateway.morgue import DeadFilter, dead_key

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def dead(
    routing_key: str = "shop.order.placed",
    queue: str | None = "shop:orders",
    error: str | None = "RuntimeError: Payment declined",
    failed_at: datetime | None = WHEN,
    message_id: str | None = "m-1",
    body: bytes = b"{}",
) -> DeadMessage:
    return DeadMessage(message_id, routing_key, queue, error, failed_at, 1, body, {})


def test_each_field_narrows_and_all_must_hold() -> None:
    message = dead()
    assert DeadFilter()(message) and DeadFilter().empty
    assert DeadFilter(routing_key="order")(message)  # a part of the key
    assert DeadFilter(routing_key="shop.*.placed")(message)  # a topic pattern
    assert not DeadFilter(routing_key="shop.*")(message)
    assert DeadFilter(queue="ORDERS")(message) and not DeadFilter(queue="mails")(message)
    assert DeadFilter(error="payment decl")(message) and not DeadFilter(error="timeout")(message)
    second = timedelta(seconds=1)
    assert DeadFilter(since=WHEN, until=WHEN)(message)
    assert not DeadFilter(since=WHEN + second)(message) and not DeadFilter(until=WHEN - second)(message)
    assert not DeadFilter(since=WHEN)(dead(failed_at=None))  # no time: outside any time bound
    assert not DeadFilter(routing_key="order", error="timeout")(message)


words = st.text(alphabet="abc", min_size=1, max_size=3)
keys = st.lists(words, min_size=1, max_size=4).map(".".join)
patterns = st.lists(st.one_of(words, st.just("*"), st.just("#")), min_size=1, max_size=4).map(".".join)


@given(patterns.filter(lambda p: "*" in p or "#" in p), keys)
def test_a_pattern_matches_as_a_topic_binding_does(pattern: str, key: str) -> None:
    assert DeadFilter(routing_key=pattern)(dead(routing_key=key)) == wire.topic_matches(pattern, key)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_a_message_without_an_id_is_named_by_its_content(one: bytes, other: bytes) -> None:
    assert dead_key(dead(message_id="id-7")) == "id-7"
    a, b = dead(message_id=None, body=one), dead(message_id=None, body=other)
    assert dead_key(a).startswith("sha256:") and dead_key(a) == dead_key(dead(message_id=None, body=one))
    assert (dead_key(a) == dead_key(b)) == (one == other)
