"""Failure policy: after a handler fails, retry it later (and when), or send it to the dead queue."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from event import wire
from event.errors import PayloadError
from event.signals import Dead, Retry

Backoff = Callable[[int], float]

DEFAULT_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a failed message: retry after ``delay`` seconds, or (``None``) dead-queue it."""

    delay: float | None
    reason: str


def decide(error: BaseException, failures: int, retries: int, backoff: Backoff | None) -> Decision:
    """Retry while ``attempt <= retries`` (spec section 6); payload errors and ``Dead`` never retry.

    ``failures`` counts earlier failures, so this attempt is ``failures + 1``. The delay is the one a
    ``Retry(in_=...)`` asked for, else ``backoff(failures)``, else hutch-schedule's ``failures**4 + 2``.
    """
    attempt = failures + 1
    if isinstance(error, Dead):
        return Decision(None, f"the handler sent it to the dead queue: {error.reason}")
    if isinstance(error, PayloadError):
        return Decision(None, "its body can never be handled, so it is not retried")
    if attempt > retries:
        return Decision(None, f"attempt {attempt} failed and the consumer allows {retries} retries")
    if isinstance(error, Retry) and error.delay is not None:
        delay = error.delay
    else:
        delay = (backoff or wire.retry_backoff)(failures)
    if not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
        return Decision(None, f"the back-off gave an unusable delay {delay!r}")
    if delay > wire.MAX_DELAY_S:
        return Decision(None, f"the delay {delay:g} s is beyond the horizon of {wire.MAX_DELAY_S} s")
    return Decision(float(delay), f"retry {attempt} of {retries} in {delay:g} s")
