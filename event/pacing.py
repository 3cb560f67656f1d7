"""Pacing: how long to wait before the next attempt of something that failed, one rule for all of them.

A consumer coming back after a cancel, a pool reconnecting, a cron schedule or a worker process
restarting: each waits the delay of its attempt in a short list, the last delay repeating, so a
failure that persists is retried at a steady, slow pace instead of in a tight loop. (A message's retry
policy is another idea: :class:`event.retry.Backoff`.)
"""

from __future__ import annotations

from collections.abc import Sequence

# A consumer's channel after a cancel or a channel error: at once first, then slower while it keeps failing.
COMEBACK_DELAYS_S = (0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# A pool's connection after it was lost.
RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# A failing cron schedule, or a worker process that exited, before each restart.
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def delay_before(attempt: int, delays: Sequence[float]) -> float:
    """The pause before attempt number ``attempt`` (from 0), the last delay repeating."""
    return delays[min(attempt, len(delays) - 1)]


__all__ = ["COMEBACK_DELAYS_S", "RECONNECT_DELAYS_S", "RESTART_DELAYS_S", "delay_before"]
