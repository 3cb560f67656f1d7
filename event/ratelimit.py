"""Per-consumer rate limits (like hutch-schedule's ``threshold``): ``"30/s"``, ``"100/m"``, ``"5000/h"``.

A message over the limit waits in its worker, already prefetched, without holding a concurrency slot
and without being acked or lost. The limit is per worker process: with N workers the consumer runs
at up to N times the rate (divide by N, or plug in a shared limiter, for a cluster-wide limit).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from event.errors import ConfigurationError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")


@dataclass(frozen=True)
class RateLimit:
    """``per_second`` messages a second on average, with up to ``burst`` at once after a quiet spell."""

    per_second: float
    burst: int


def parse_rate(text: str, burst: int = 1, where: str = "the consumer") -> RateLimit:
    """``"20/s"`` into a :class:`RateLimit`; a :class:`ConfigurationError` naming the consumer otherwise."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigurationError(f"rate_limit {text!r} of {where} must look like '30/s', '100/m' or '5000/h'")
    count = float(match[1])
    if count <= 0:
        raise ConfigurationError(f"rate_limit {text!r} of {where} must allow at least some messages")
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
        raise ConfigurationError(f"rate_burst of {where} must be a whole number of at least 1, not {burst!r}")
    return RateLimit(count / _UNITS[match[2]], burst)


class RateLimiter:
    """A reservation-based token bucket (GCRA): each caller is given its own start time, in order.

    ``clock`` gives the time in seconds (the pool passes its own). A clock that also has an
    ``async sleep(seconds)`` keeps its own time, and the limiter waits on it: event.testing's virtual
    clock does, so a rate-limited message waits for ``TestBroker.advance`` rather than for real time.
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / limit.per_second
        self.slack = (limit.burst - 1) * self.interval
        self.clock = clock
        self._sleep: Callable[[float], Awaitable[None]] = getattr(clock, "sleep", asyncio.sleep)
        self._next = 0.0  # the theoretical arrival time of the next message
        self._waiting = 0  # callers told to wait and not yet through

    def reserve(self) -> float:
        """Seconds the caller must wait before going ahead (0: now); takes its place in the line."""
        now = self.clock()
        # A clock set back (the wall clock the pool passes) must not hold the line for that long: no
        # caller waits longer than the callers waiting now need. A steady clock never reaches this bound.
        self._next = min(self._next, now + self.slack + (self._waiting + 1) * self.interval)
        arrival = max(self._next, now)
        self._next = arrival + self.interval
        wait = max(0.0, arrival - self.slack - now)
        if wait > 0:
            self._waiting += 1
        return wait

    async def acquire(self) -> None:
        """Wait for this caller's turn."""
        wait = self.reserve()
        if wait > 0:
            try:
                await self._sleep(wait)
            finally:
                self._waiting -= 1
