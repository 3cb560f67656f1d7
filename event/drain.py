"""The autoscaling signal: per consumer queue, messages ready, this worker's recent ack rate, and how long
the queue would take to drain at that rate (``event_drain_seconds``, see docs/autoscaling.md).

- **Messages ready** come from a passive ``queue.declare`` of each consumer queue every ``interval``
  seconds (5 by default), on a channel of the poller's own: one round trip per queue, answered by the
  queue itself, so exact at that moment, with no management plugin and none of its statistics lag.
  A queue the broker cannot answer for (deleted, its node down) is not reported until it answers again,
  rather than reported stale.
- **The recent ack rate** is how many deliveries this worker settled (acked after its handler, or
  replaced by a retry, re-park or dead copy: whatever took them off the queue) per second over the last
  ``window`` seconds (60 by default): the count now minus the count at the newest sample at least
  ``window`` old, divided by the time between (less than ``window`` just after the start).
- **Drain seconds** are ready ÷ rate: 0 when nothing is ready, ``+Inf`` when messages are ready and
  this worker settled none within the window (stuck, paused, or just started).

This module is the signal's arithmetic (ground floor: :mod:`event.metrics` reads it at scrape time);
:mod:`event.depths` polls the broker for the ready counts.

Each worker reports its own rate. For a fleet, divide the queue's ready messages by the sum of the
workers' rates (the PromQL is in docs/autoscaling.md).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

DEFAULT_INTERVAL_S = 5.0
DEFAULT_WINDOW_S = 60.0


class RecentRate:
    """Events per second over the last ``window`` seconds, from samples of a running total."""

    __slots__ = ("samples", "window")

    def __init__(self, window: float = DEFAULT_WINDOW_S) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, total: int) -> None:
        """Record the running ``total`` at ``now``; samples older than the window's anchor go."""
        self.samples.append((now, total))
        # Keep one sample at least `window` old (the anchor), none older.
        while len(self.samples) >= 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()

    def rate(self, now: float, total: int) -> float:
        """The rate between the anchor sample and ``total`` at ``now`` (0 before any sample)."""
        if not self.samples:
            return 0.0
        since, then = self.samples[0]
        span = now - since
        return max(total - then, 0) / span if span > 0 else 0.0


def drain_seconds(ready: int, rate: float) -> float:
    """``ready / rate``; 0 when nothing is ready, ``inf`` when something is and the rate is 0."""
    if ready <= 0:
        return 0.0
    if rate <= 0:
        return math.inf
    return ready / rate


@dataclass
class QueueDepth:
    """One consumer queue's signal: ``ready`` at the last poll (None: not known), and the ack rate."""

    ready: int | None = None
    rate: RecentRate = field(default_factory=RecentRate)
