"""The failure policy, delay arguments and the headers of delayed and retried copies."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

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
    assert headers == {
        "trace": "t",
        "CC": ["app.a"],
        "event-routing-key": "app.a",
        "event-retries": 0,
        "event-foreign-failures": 0,
        "event-park-to": "exchange",
    }
    assert wire.delayed_headers(None, "app.a", due_at_ms=99)["event-due-at"] == 99


def test_delay_plan_sets_a_due_time_only_past_the_longest_level() -> None:
    assert wire.delay_plan(7, 1_000) == (10, None)
    assert wire.delay_plan(86400, 1_000) == (10800, 1_000 + 86_400_000)


def test_retry_headers_address_the_failing_queue_and_count() -> None:
    delivered = {"CC": ["app.a"], "x-death": [{"count": 1}], "event-retries": 0, "event-due-at": 5}
    headers = wire.retry_headers(delivered, failures=2, routing_key="app.a", queue="ns:q", foreign=2)
    assert headers == {
        "x-death": [{"count": 1}],
        "event-retries": 3,
        "event-foreign-failures": 2,
        "event-routing-key": "app.a",
        "event-park-to": "queue:ns:q",
    }  # no CC: a Ruby consumer's retry merges our headers into its own, and ours would route it


def test_a_retry_seen_by_another_queue_is_addressed_elsewhere() -> None:
    retry = {"CC": ["ns:q"], "event-routing-key": "app.a"}
    assert wire.addressed_queue("ns:hutch_delay_queue_5s", retry) == "ns:q"
    delayed_event = {"CC": ["app.a"], "event-routing-key": "app.a"}
    assert wire.addressed_queue("ns:hutch_delay_queue_5s", delayed_event) is None
    assert wire.addressed_queue("hutch.schedule.5s", {"CC": ["app.a"]}) is None  # hutch-schedule's
    assert wire.addressed_queue("app.a", retry) is None  # not through a delay queue


def _death(queue: str, exchange: str, keys: list[str], count: int) -> dict[str, Any]:
    return {"queue": queue, "exchange": exchange, "routing-keys": keys, "count": count, "reason": "expired"}


RUBY_DEATH = _death("ruby:hutch_delay_queue_5s", "hutch.schedule", ["hutch.schedule.5s", "app.a"], 2)


def test_failures_continue_a_ruby_count_without_our_header() -> None:
    assert wire.failures({"x-death": [RUBY_DEATH]}, ["app.a"], "ns:q") == 2


def test_failures_add_ruby_failures_since_our_last_retry() -> None:
    # We retried at 1 failure (none of Ruby's); Ruby then failed twice on the same queue.
    headers = {"event-retries": 1, "event-foreign-failures": 0, "x-death": [RUBY_DEATH]}
    assert wire.failures(headers, ["app.a"], "ns:q") == 3
    # Ruby's two failures were already counted when we retried: not again.
    headers = {"event-retries": 3, "event-foreign-failures": 2, "x-death": [RUBY_DEATH]}
    assert wire.failures(headers, ["app.a"], "ns:q") == 3


def test_failures_take_event_retries_alone_from_older_copies() -> None:
    # Copies made before event-foreign-failures existed: event-retries is authoritative (spec section 6).
    assert wire.failures({"event-retries": 1, "x-death": [RUBY_DEATH]}, ["app.a"], "ns:q") == 1


def test_failures_leave_out_our_own_copies_deaths() -> None:
    park = _death("ns:hutch_park_queue_5s", "hutch.delay", ["ns:hutch_park_queue_5s", "app.a"], 4)
    older = _death("ns:hutch_delay_queue_5s", "hutch.delay", ["ns:hutch_delay_queue_5s", "ns:q"], 3)
    assert wire.failures({"event-retries": 0, "x-death": [park, older]}, ["app.a"], "ns:q") == 0
    assert wire.foreign_failures({"x-death": [park, older, RUBY_DEATH]}, ["app.a"], "ns:q") == 2


def test_failures_never_go_down_when_a_broker_forgets_x_death() -> None:
    # RabbitMQ 4.x ignores an x-death a client republishes: Ruby's count may restart below what we saw.
    headers = {"event-retries": 3, "event-foreign-failures": 2, "x-death": [{**RUBY_DEATH, "count": 1}]}
    assert wire.failures(headers, ["app.a"], "ns:q") == 3


# What another client may put in an x-death entry: any header value, nested.
HEADER_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {}, optional={"routing-keys": HEADER_VALUES, "count": HEADER_VALUES, "queue": HEADER_VALUES}
        )
        | HEADER_VALUES,
        max_size=4,
    )
)
def test_a_malformed_x_death_counts_what_it_can_and_never_raises(entries: list[Any]) -> None:
    # A delivery whose x-death a client wrote wrong is still run or dead-queued: its count cannot raise
    # (before, routing-keys that was not a list raised TypeError and the delivery was never settled).
    counted = wire.failures({"x-death": [*entries, RUBY_DEATH]}, ["app.a"], "ns:q")
    assert counted >= 2


def test_routing_keys_not_a_list_or_not_utf8_name_no_key() -> None:
    for keys in (7, b"app.a", {"app.a": 1}, [b"\xff\xfe", 3]):
        assert (
            wire.foreign_failures({"x-death": [{**RUBY_DEATH, "routing-keys": keys}]}, ["app.a"], "ns:q") == 0
        )


@given(
    own=st.integers(min_value=0, max_value=50),
    seen=st.integers(min_value=0, max_value=50),
    now=st.integers(min_value=0, max_value=50),
)
def test_failures_are_at_least_our_own_count(own: int, seen: int, now: int) -> None:
    headers = {
        "event-retries": own,
        "event-foreign-failures": seen,
        "x-death": [{**RUBY_DEATH, "count": now}],
    }
    counted = wire.failures(headers, ["app.a"], "ns:q")
    assert counted >= own
    assert counted == own + max(now - seen, 0)


def test_a_schedule_copy_names_the_namespace_whose_delay_queue_made_it() -> None:
    def copy_from(queue: str) -> dict[str, Any]:
        death = _death(queue, "hutch.schedule", ["hutch.schedule.5s", "app.a"], 1)
        return {"CC": ["app.a"], "x-death": [death]}

    assert wire.schedule_copy_origin("hutch.schedule.5s", copy_from("ns:hutch_delay_queue_5s")) == "ns"
    assert wire.schedule_copy_origin("hutch.schedule.5s", copy_from("a:b:hutch_delay_queue_60s")) == "a:b"
    assert wire.schedule_copy_origin("hutch.schedule.5s", copy_from("hutch_delay_queue_5s")) == ""
    # No choice for a copy of unknown origin, nor for anything that did not come through hutch-schedule.
    assert wire.schedule_copy_origin("hutch.schedule.5s", {"CC": ["app.a"]}) is None
    assert wire.schedule_copy_origin("hutch.schedule.5s", copy_from("some_queue")) is None
    assert wire.schedule_copy_origin("hutch.schedule.5s", copy_from("ns:hutch_park_queue_5s")) is None
    assert wire.schedule_copy_origin("app.a", copy_from("ruby:hutch_delay_queue_5s")) is None


def test_reserved_queue_names() -> None:
    for name in ("ns:hutch_delay_queue_5s", "ns:hutch_park_queue_10s", "hutch_park_queue_10800s"):
        assert wire.is_reserved_queue_name(name, "hutch")
    assert not wire.is_reserved_queue_name("ns:hutch_park_queue_7s", "hutch")
    assert not wire.is_reserved_queue_name("ns:send_email", "hutch")


def test_a_retry_beyond_the_horizon_goes_dead_instead_of_parking_for_ever() -> None:
    far = decide(Retry(in_=wire.MAX_DELAY_S + 1), 0, 3, None)
    assert far.delay is None and "beyond the horizon" in far.reason
    assert decide(Retry(in_=wire.MAX_DELAY_S), 0, 3, None).delay == wire.MAX_DELAY_S


def test_broker_retry_follows_the_back_off_at_its_two_ends() -> None:
    from event.retry import broker_retry_arguments

    assert broker_retry_arguments(3, None) == {  # hutch-schedule's failures**4 + 2: 2 s ... 18 s
        "x-delayed-retry-type": "failed",
        "x-delayed-retry-min": 2000,
        "x-delayed-retry-max": 18000,
        "x-delivery-limit": 5,
    }
    flat = broker_retry_arguments(25, lambda n: 0.5)
    assert (flat["x-delayed-retry-min"], flat["x-delayed-retry-max"], flat["x-delivery-limit"]) == (
        500,
        500,
        27,
    )


def test_broker_retry_needs_a_quorum_queue_of_the_consumer_or_of_the_pool() -> None:
    from event import ConfigurationError, WorkerPool

    async def handler(ctx: object, msg: object) -> None: ...

    with pytest.raises(
        ConfigurationError, match=r'retry="broker", which RabbitMQ 4\.3 offers on quorum queues'
    ):
        WorkerPool(namespace="t").consumer("app.a", retry="broker")(handler)
    pool = WorkerPool(namespace="t", queue_type="quorum")
    pool.consumer("app.a", retry="broker")(handler)
    assert pool.consumers[0].arguments["x-delayed-retry-type"] == "failed"


@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "x-death",
                "CC",
                "BCC",
                wire.H_RETRIES,
                wire.H_FOREIGN_FAILURES,
                wire.H_ROUTING_KEY,
                wire.H_DUE_AT,
                wire.H_DELIVERIES,
                "x-first-death-queue",
                "other",
            ]
        ),
        HEADER_VALUES,
    ),
    delivery_routing_key=st.text(max_size=20),
)
def test_any_headers_from_another_client_are_read_without_raising(
    headers: dict[str, Any], delivery_routing_key: str
) -> None:
    # Every rule a consumer applies to a delivery's headers before its handler: whatever another client
    # wrote, each answers (a default when a header is unusable), so the delivery is always settled.
    read = wire.read_headers(delivery_routing_key, headers, "ex")
    assert isinstance(read.routing_key, str)
    assert read.failures(["app.a"], "ns:q") >= 0
    read.due_in_ms(0)
    assert wire.unsettled_deliveries(headers, redelivered=True) >= 1
