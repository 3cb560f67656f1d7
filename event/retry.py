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

# Broker-side retry (``retry="broker"``): RabbitMQ 4.3's delayed retry on quorum queues.
RETRY_MODES = ("park", "broker")
BROKER_RETRY_SINCE = (4, 3)
H_DELIVERY_COUNT = "x-delivery-count"  # the quorum queue's count of deliveries that ended unacked


def broker_retry_arguments(retries: int, backoff: Backoff | None) -> dict[str, int | str]:
    """The quorum queue arguments that make RabbitMQ 4.3 wait before each redelivery of a rejected message.

    The broker waits ``min * n`` before the ``n``-th redelivery, capped at ``max``: a line through the
    consumer's first and last back-off delays (hutch-schedule's ``failures**4 + 2`` gives 2 s, then
    at most 83 s for 3 retries). A curve (exponential, hutch-schedule's) is thus followed at its two
    ends only. ``x-delivery-limit`` lies beyond the retries, so that the last failure reaches our own
    dead queue (with its headers) before the broker would drop the message."""
    delay = backoff or wire.retry_backoff
    first = max(1, math.ceil(float(delay(0)) * 1000))
    last = max(first, math.ceil(float(delay(max(0, retries - 1))) * 1000))
    return {
        "x-delayed-retry-type": "failed",
        "x-delayed-retry-min": first,
        "x-delayed-retry-max": last,
        "x-delivery-limit": retries + 2,
    }


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
