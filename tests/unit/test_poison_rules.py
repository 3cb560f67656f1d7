"""The rules for deliveries that never settled: counting, giving up, the copy's and dead copy's headers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event import ConfigurationError, WorkerPool, wire

header_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 50), st.text(max_size=3), st.binary(max_size=3)
)


@given(own=header_values, redelivered=st.booleans())
def test_the_count_is_the_carried_one_plus_the_delivery_that_just_ended(own: Any, redelivered: bool) -> None:
    headers = {} if own is None else {wire.H_DELIVERIES: own}
    count = wire.unsettled_deliveries(headers, redelivered=redelivered)
    carried = own if isinstance(own, int) and not isinstance(own, bool) and own > 0 else 0
    assert count == carried + redelivered  # junk or negative counts read as none, never as a crash


@given(st.integers(0, 100), st.integers(2, 50))
def test_a_message_gives_up_exactly_at_the_limit(deliveries: int, limit: int) -> None:
    assert wire.is_poison(deliveries, limit) == (deliveries >= limit)


@given(st.integers(2, 20))
def test_each_redelivery_raises_the_count_until_the_dead_queue(limit: int) -> None:
    headers: dict[str, Any] = {}
    runs = 1  # the first delivery ran and killed the worker
    while True:
        count = wire.unsettled_deliveries(headers, redelivered=True)
        if wire.is_poison(count, limit):
            break
        headers = wire.recount_headers(headers, deliveries=count, routing_key="app.x")
        runs += 1  # the copy runs, and kills the worker again
    assert runs == limit == headers.get(wire.H_DELIVERIES, 0) + 1


def test_the_counted_copy_keeps_its_routing_key_and_drops_cc() -> None:
    headers = {"CC": ["app.x"], "BCC": ["q"], "x-death": [{"count": 1}], "keep": 1}
    copy = wire.recount_headers(headers, deliveries=2, routing_key="app.x")
    assert copy == {"x-death": [{"count": 1}], "keep": 1, wire.H_ROUTING_KEY: "app.x", wire.H_DELIVERIES: 2}
    assert "CC" in headers  # the original is left alone


def test_the_error_names_the_count_and_the_likely_cause() -> None:
    error = wire.poison_error(3, 3)
    assert error.startswith("WorkerDied: delivered 3 time(s)")
    assert "max_deliveries=3" in error and "worker likely died" in error
    assert len(wire.format_error(error).encode()) <= wire.ERROR_HEADER_LIMIT


@given(st.integers(2, 1000))
def test_the_brokers_limit_stays_above_ours(limit: int) -> None:
    arguments = wire.quorum_poison_arguments("ns:hutch_dead_queue", limit)
    assert arguments["x-delivery-limit"] > limit
    assert arguments["x-dead-letter-exchange"] == ""
    assert arguments["x-dead-letter-routing-key"] == "ns:hutch_dead_queue"


def test_only_quorum_consumer_queues_get_the_brokers_limit() -> None:
    pool = WorkerPool("amqp://localhost/", namespace="ns", queue_type="quorum")

    @pool.consumer("app.a", max_deliveries=4)
    async def a(ctx: object, msg: object) -> None: ...

    @pool.consumer("app.b", arguments={"x-queue-type": "classic"})
    async def b(ctx: object, msg: object) -> None: ...

    @pool.consumer("app.c", arguments={"x-delivery-limit": 50})
    async def c(ctx: object, msg: object) -> None: ...

    queues = {q.name: q.arguments for q in pool.topology().queues}
    assert queues["ns:a"] == {
        "x-queue-type": "quorum",
        **wire.quorum_poison_arguments("ns:hutch_dead_queue", 4),
    }
    assert queues["ns:b"] == {"x-queue-type": "classic"}
    assert queues["ns:c"]["x-delivery-limit"] == 50  # the consumer's own choice wins
    assert "x-delivery-limit" not in queues["ns:hutch_dead_queue"]


@pytest.mark.parametrize("bad", [0, 1, -1, 2.5, True, "5"])
def test_max_deliveries_is_validated(bad: Any) -> None:
    pool = WorkerPool("amqp://localhost/")
    with pytest.raises(ConfigurationError, match="max_deliveries of consumer"):
        pool.consumer("app.a", max_deliveries=bad)(lambda ctx, msg: None)
