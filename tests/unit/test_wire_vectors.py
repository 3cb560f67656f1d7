"""Every rule of the wire format that needs no broker, checked against shared/spec/vectors.json."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import vectors

from event import wire

V = vectors()


def test_levels_are_the_spec_levels() -> None:
    assert list(wire.LEVELS) == V["levels"]


@pytest.mark.parametrize("case", V["queue_name"], ids=lambda c: f"{c['namespace']}|{c['qualname']}")
def test_queue_name(case: dict[str, Any]) -> None:
    assert wire.queue_name(case["namespace"], wire.name_from_qualname(case["qualname"])) == case["queue"]


@pytest.mark.parametrize("case", V["delay_queue_name"], ids=lambda c: c["queue"])
def test_delay_queue_name(case: dict[str, Any]) -> None:
    assert wire.delay_queue_name(case["namespace"], case["exchange"], case["level_s"]) == case["queue"]
    assert wire.is_delay_queue_name(case["queue"], case["exchange"])


@pytest.mark.parametrize("case", V["dead_queue_name"], ids=lambda c: c["queue"])
def test_dead_queue_name(case: dict[str, Any]) -> None:
    assert wire.dead_queue_name(case["namespace"], case["exchange"]) == case["queue"]


@pytest.mark.parametrize("case", V["delay_level"], ids=lambda c: str(c["delay_s"]))
def test_delay_level(case: dict[str, Any]) -> None:
    assert wire.delay_level(case["delay_s"]) == case["level_s"]
    assert wire.is_long_delay(case["delay_s"]) is case["long_delay"]


@pytest.mark.parametrize("case", V["retry_backoff"], ids=lambda c: str(c["failures"]))
def test_retry_backoff(case: dict[str, Any]) -> None:
    assert wire.retry_backoff(case["failures"]) == case["delay_s"]
    assert wire.delay_level(wire.retry_backoff(case["failures"])) == case["level_s"]


@pytest.mark.parametrize("case", V["failures"], ids=lambda c: f"{c['queue']}-{c['failures']}")
def test_failures(case: dict[str, Any]) -> None:
    got = wire.failures(case["headers"], case["routing_keys"], case["queue"])
    assert got == case["failures"]
    assert got + 1 == case["attempt"]
    # The same through the reading a consumer makes of a delivery's headers.
    read = wire.read_headers("any.key", case["headers"])
    assert read.failures(case["routing_keys"], case["queue"]) == case["failures"]


@pytest.mark.parametrize("case", V["logical_routing_key"], ids=lambda c: c["delivery_routing_key"])
def test_logical_routing_key(case: dict[str, Any]) -> None:
    assert wire.logical_routing_key(case["delivery_routing_key"], case["headers"]) == case["routing_key"]
    assert wire.read_headers(case["delivery_routing_key"], case["headers"]).routing_key == case["routing_key"]


@given(st.floats(min_value=0, max_value=wire.MAX_LEVEL, allow_nan=False, exclude_min=True))
def test_level_is_the_smallest_level_not_below_the_delay(delay: float) -> None:
    level = wire.delay_level(delay)
    assert level in wire.LEVELS
    assert level >= delay  # never early
    assert all(lower < delay for lower in wire.LEVELS if lower < level)  # and the smallest such


@given(st.floats(min_value=wire.MAX_LEVEL, max_value=1e9, allow_nan=False, exclude_min=True))
def test_longer_delays_take_the_longest_level_and_are_long(delay: float) -> None:
    assert wire.delay_level(delay) == wire.MAX_LEVEL
    assert wire.is_long_delay(delay)


@given(st.text())
def test_sanitised_namespace_keeps_only_hutch_characters(namespace: str) -> None:
    cleaned = wire.sanitize_namespace(namespace)
    assert all(ch in "abcdefghijklmnopqrstuvwxyz0123456789_-:." for ch in cleaned)
    assert wire.sanitize_namespace(cleaned) == cleaned


def test_nested_function_names_drop_their_enclosing_scope() -> None:
    def make() -> Any:
        def sendWelcome() -> None:
            pass

        return sendWelcome

    assert wire.name_from_qualname(make().__qualname__) == "send_welcome"


def test_is_delay_queue_name_rejects_lookalikes() -> None:
    assert wire.is_delay_queue_name("hutch_delay_queue_5s", "hutch")
    assert not wire.is_delay_queue_name("myapp:hutch_delay_queue_7s", "hutch")  # not a level
    assert not wire.is_delay_queue_name("myapphutch_delay_queue_5s", "hutch")
    assert not wire.is_delay_queue_name("myapp:events_delay_queue_5s", "hutch")


def test_dead_headers_keep_the_original_but_cc_and_bcc() -> None:
    original = {"CC": ["myapp:q"], "BCC": ["x"], "x-death": [{"count": 1}], "trace": "abc"}
    headers = wire.dead_headers(
        original, routing_key="app.a", queue="myapp:q", error="E: boom", failed_at_ms=123, failures=2
    )
    assert headers == {
        "x-death": [{"count": 1}],
        "trace": "abc",
        "event-routing-key": "app.a",
        "event-queue": "myapp:q",
        "event-error": "E: boom",
        "event-failed-at": 123,
        "event-retries": 2,
    }
    assert original["CC"] == ["myapp:q"]  # the input is not changed


@given(st.text(min_size=0, max_size=3000))
def test_error_header_is_at_most_one_kib_of_utf8(message: str) -> None:
    text = wire.format_error(RuntimeError(message))
    assert len(text.encode()) <= wire.ERROR_HEADER_LIMIT
    assert text.startswith("RuntimeError")


def test_requeue_headers_reset_the_failure_marks() -> None:
    dead = {
        "x-death": [{"count": 3}],
        "CC": ["a"],
        "event-error": "E",
        "event-failed-at": 1,
        "event-retries": 3,
        "event-routing-key": "app.a",
        "event-queue": "ns:q",
    }
    assert wire.requeue_headers(dead) == {
        "event-retries": 0,
        "event-routing-key": "app.a",
        "event-queue": "ns:q",
    }


def test_queue_arguments_are_the_specs() -> None:
    assert wire.delay_queue_arguments("hutch") == {
        "x-message-ttl": 2592000000,
        "x-dead-letter-exchange": "hutch",
    }
    assert wire.dead_queue_arguments() == {"x-message-ttl": 2592000000, "x-max-length": 100000}


def test_a_delivery_s_headers_read_once_give_each_rule_s_answer() -> None:
    # An older event's retry through a hutch-schedule delay queue, addressed to one queue, due later.
    headers = {
        "CC": [b"app:orders"],
        wire.H_ROUTING_KEY: "orders.created",
        wire.H_DUE_AT: 5_000,
        "x-death": [{"queue": "ns:hutch_delay_queue_5s", "count": 1, "routing-keys": ["orders.created"]}],
    }
    key = "hutch_delay_queue_5s"
    read = wire.read_headers(key, headers)
    assert read.routing_key == wire.logical_routing_key(key, headers) == "orders.created"
    assert read.addressed_queue == wire.addressed_queue(key, headers) == "app:orders"
    assert read.schedule_origin == wire.schedule_copy_origin(key, headers)
    assert read.due_in_ms(1_000) == wire.due_in_ms(headers, 1_000) == 4_000
    assert read.failures(["orders.created"], "app:orders") == wire.failures(
        headers, ["orders.created"], "app:orders"
    )
    # hutch-schedule's copy out of another namespace's delay queue
    copy = {"x-death": [{"queue": "other:hutch_delay_queue_5s", "count": 1}]}
    assert wire.read_headers("hutch.schedule.5s", copy).schedule_origin == "other"
    assert wire.read_headers("orders.created", {"x": 1}).due_in_ms(0) is None
