"""The failure policy, delay arguments and the headers of delayed and retried copies."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event import Dead, DecodeError, Retry, wire
from event.publisher import delay_seconds, seconds_until
from event.retry import decide


@given(st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=30))
def test_a_message_is_retried_exactly_while_its_attempt_is_within_retries(
    failures: int, retries: int
) -> None:
    decision = decide(RuntimeError("x"), failures, retries, None)
    assert (decision.delay is not None) == (failures + 1 <= retries)
    if decision.delay is not None:
        assert decision.delay == failures**4 + 2


def test_retries_two_means_three_runs() -> None:
    runs = 0
    failures = 0
    while True:
        runs += 1
        if decide(RuntimeError("x"), failures, 2, None).delay is None:
            break
        failures += 1
    assert runs == 3


def test_dead_and_payload_errors_skip_the_retries() -> None:
    assert decide(Dead("no"), 0, 5, None).delay is None
    assert decide(DecodeError("bad"), 0, 5, None).delay is None


def test_retry_signal_chooses_the_delay_but_still_counts() -> None:
    assert decide(Retry(in_=30), 0, 5, None).delay == 30
    assert decide(Retry(in_=timedelta(minutes=2)), 1, 5, None).delay == 120
    assert decide(Retry(), 1, 5, lambda f: 7.0).delay == 7.0
    assert decide(Retry(in_=30), 5, 5, None).delay is None  # attempt 6 > 5 retries


def test_a_broken_backoff_dead_queues_instead_of_crashing() -> None:
    assert decide(RuntimeError(), 0, 5, lambda f: math.nan).delay is None
    assert decide(RuntimeError(), 0, 5, lambda f: -1).delay is None


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, timedelta(seconds=-5)])
def test_bad_delays_are_value_errors_naming_the_argument(bad: float | timedelta) -> None:
    with pytest.raises(ValueError, match="delay must be"):
        delay_seconds(bad)


def test_delay_accepts_numbers_and_timedeltas() -> None:
    assert delay_seconds(0) == 0
    assert delay_seconds(2.5) == 2.5
    assert delay_seconds(timedelta(days=2)) == 172800
    with pytest.raises(TypeError, match="delay must be seconds"):
        delay_seconds("5")  # type: ignore[arg-type]


def test_publish_at_needs_an_aware_datetime() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        seconds_until(datetime(2030, 1, 1), 0.0)
    assert seconds_until(datetime(1970, 1, 1, 0, 1, tzinfo=UTC), 0.0) == 60


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("app.send_email", "app.send_email", True),
        ("app.*", "app.send_email", True),
        ("app.*", "app.user.created", False),
        ("app.#", "app.user.created", True),
        ("app.#", "app", True),
        ("#", "anything.at.all", True),
        ("app.*.created", "app.user.created", True),
        ("app.#.created", "app.created", True),
        ("*.created", "app.user.created", False),
    ],
)
def test_topic_matching_follows_rabbitmq(pattern: str, key: str, matches: bool) -> None:
    assert wire.topic_matches(pattern, key) is matches


def test_delayed_event_headers() -> None:
    headers = wire.delayed_headers({"trace": "t"}, "app.a", due_at_ms=None)
    assert headers == {"trace": "t", "CC": ["app.a"], "event-routing-key": "app.a", "event-retries": 0}
    assert wire.delayed_headers(None, "app.a", due_at_ms=99)["event-due-at"] == 99


def test_delay_plan_sets_a_due_time_only_past_the_longest_level() -> None:
    assert wire.delay_plan(7, 1_000) == (10, None)
    assert wire.delay_plan(86400, 1_000) == (10800, 1_000 + 86_400_000)


def test_retry_headers_address_the_failing_queue_and_count() -> None:
    delivered = {"CC": ["app.a"], "x-death": [{"count": 1}], "event-retries": 0, "event-due-at": 5}
    headers = wire.retry_headers(delivered, failures=0, routing_key="app.a", queue="ns:q")
    assert headers == {
        "CC": ["ns:q"],
        "x-death": [{"count": 1}],
        "event-retries": 1,
        "event-routing-key": "app.a",
    }


def test_a_retry_seen_by_another_queue_is_addressed_elsewhere() -> None:
    retry = {"CC": ["ns:q"], "event-routing-key": "app.a"}
    assert wire.addressed_queue("ns:hutch_delay_queue_5s", retry) == "ns:q"
    delayed_event = {"CC": ["app.a"], "event-routing-key": "app.a"}
    assert wire.addressed_queue("ns:hutch_delay_queue_5s", delayed_event) is None
    assert wire.addressed_queue("hutch.schedule.5s", {"CC": ["app.a"]}) is None  # hutch-schedule's
    assert wire.addressed_queue("app.a", retry) is None  # not through a delay queue
