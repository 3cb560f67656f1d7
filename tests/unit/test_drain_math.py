"""The autoscaling signal's arithmetic: the recent rate's window, drain time at rate 0, event queues' row."""

from __future__ import annotations

import math

from event.cli import format_drain, queue_row
from event.drain import RecentRate, drain_seconds


def test_the_rate_covers_the_last_window_and_less_at_the_start() -> None:
    rate = RecentRate(window=60)
    assert rate.rate(0, 0) == 0.0  # no sample yet
    rate.sample(0, 0)
    assert rate.rate(10, 100) == 10.0  # 10 s in: over what there is
    for t in range(5, 125, 5):  # 10/s for two minutes, sampled every 5 s
        rate.sample(t, t * 10)
    assert rate.rate(120, 1200) == 10.0
    assert rate.samples[0][0] == 60  # the anchor: the newest sample at least a window old
    for t in range(125, 155, 5):  # then nothing more is settled: the rate falls over the window
        rate.sample(t, 1200)
    assert rate.rate(150, 1200) == 300 / 60  # since the anchor at 90 s (900 settled)
    for t in range(155, 190, 5):
        rate.sample(t, 1200)
    assert rate.rate(185, 1200) == 0.0


def test_drain_is_zero_when_nothing_is_ready_and_infinite_at_rate_zero() -> None:
    assert drain_seconds(0, 0.0) == 0.0
    assert drain_seconds(0, 5.0) == 0.0
    assert drain_seconds(10, 0.0) == math.inf
    assert drain_seconds(100, 4.0) == 25.0


def test_event_queues_row_and_its_drain_column() -> None:
    row = queue_row(
        {
            "name": "ns:q",
            "messages": 130,
            "messages_ready": 120,
            "messages_unacknowledged": 10,
            "consumers": 2,
            "message_stats": {"ack_details": {"rate": 4.0}, "publish_details": {"rate": 1.0}},
        }
    )
    assert row["drain_seconds"] == 30.0 and row["ready"] == 120 and row["ack_rate"] == 4.0
    assert queue_row({"name": "ns:idle", "messages_ready": 3})["drain_seconds"] == math.inf
    assert [format_drain(s) for s in (0.0, 41.2, 425, 10920, math.inf)] == [
        "0s",
        "42s",
        "7m05s",
        "3h02m",
        "inf",
    ]
