"""The wire format shared with Hutch and hutch-schedule, as pure functions.

Everything here follows ``shared/spec/wire-format.md`` and is checked against its ``vectors.json``.
No I/O and no state: each rule is a small function that a test can call with plain values.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from event.errors import ConfigurationError

CONTENT_TYPE = "application/json"
PERSISTENT = 2

# hutch-schedule's fixed delay levels, in seconds (spec section 4).
LEVELS: tuple[int, ...] = (
    5, 10, 20, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600,
    1200, 1800, 2400, 3000, 3600, 7200, 10800,
)  # fmt: skip
MAX_LEVEL = LEVELS[-1]

THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000
DELAY_QUEUE_TTL_MS = THIRTY_DAYS_MS
DEAD_QUEUE_TTL_MS = THIRTY_DAYS_MS
DEAD_QUEUE_MAX_LENGTH = 100_000
ERROR_HEADER_LIMIT = 1024

# Header names of our own (spec sections 4-7).
H_ROUTING_KEY = "event-routing-key"
H_RETRIES = "event-retries"
H_DUE_AT = "event-due-at"
H_QUEUE = "event-queue"
H_ERROR = "event-error"
H_FAILED_AT = "event-failed-at"

_NAMESPACE_DROP = re.compile(r"[^a-z0-9_\-:.]")
_CAMEL_BOUNDARY = re.compile(r"([^A-Z:])([A-Z])")


# --- names -----------------------------------------------------------------------------------------------


def sanitize_namespace(namespace: str) -> str:
    """Hutch's namespace rule: lower-case, then drop every character but letters, digits, ``_-:.``."""
    return _NAMESPACE_DROP.sub("", namespace.lower())


def name_from_qualname(qualname: str) -> str:
    """Derive a queue name from a Python ``__qualname__`` as Hutch derives one from a Ruby class name.

    ``Billing.chargeCard`` gives ``billing:charge_card``. A function defined inside another function has
    ``<locals>`` in its qualname; only the part after the last ``<locals>`` is used, so the name does not
    depend on where the decorator was called.
    """
    if "<locals>." in qualname:
        qualname = qualname.rsplit("<locals>.", 1)[1]
    name = qualname.replace(".", ":")
    return _CAMEL_BOUNDARY.sub(r"\1_\2", name).lower()


def queue_name(namespace: str, name: str) -> str:
    """``<namespace>:<name>`` with Hutch's namespace sanitising, or ``<name>`` without a namespace."""
    prefix = sanitize_namespace(namespace)
    return f"{prefix}:{name}" if prefix else name


def delay_queue_name(namespace: str, exchange: str, level_s: int) -> str:
    """hutch-schedule's delay queue for one level, e.g. ``myapp:hutch_delay_queue_5s``."""
    return queue_name(namespace, f"{exchange}_delay_queue_{level_s}s")


def dead_queue_name(namespace: str, exchange: str) -> str:
    """The bounded dead queue, e.g. ``myapp:hutch_dead_queue``."""
    return queue_name(namespace, f"{exchange}_dead_queue")


def delay_exchange_name(exchange: str) -> str:
    """The direct exchange that delayed copies are published through, e.g. ``hutch.delay``.

    The spec publishes them through the default exchange, but there a ``CC`` header naming a queue
    also delivers an immediate copy to that queue, so every retry would run twice. On this exchange
    only the delay queues are bound (each by its own, namespaced name), so ``CC`` matches nothing.
    """
    return f"{exchange}.delay"


def control_exchange_name(exchange: str) -> str:
    """The direct exchange carrying operators' commands (pause, resume) to workers, e.g. ``hutch.control``.

    Not the main exchange: a Hutch consumer bound with ``#`` would receive the commands as events.
    """
    return f"{exchange}.control"


def control_routing_key(namespace: str) -> str:
    """The routing key of one namespace's commands on the control exchange: its sanitised name."""
    return sanitize_namespace(namespace)


def is_delay_queue_name(name: str, exchange: str) -> bool:
    """Whether ``name`` is the delay queue of some level and some namespace for ``exchange``."""
    suffix = f"{exchange}_delay_queue_"
    head, sep, tail = name.rpartition(suffix)
    if not sep or (head and not head.endswith(":")):
        return False
    return tail.endswith("s") and tail[:-1].isdigit() and int(tail[:-1]) in LEVELS


# --- queue arguments -------------------------------------------------------------------------------------


def delay_queue_arguments(exchange: str) -> dict[str, Any]:
    """Arguments of every delay queue: expire into the main exchange after at most 30 days."""
    return {"x-message-ttl": DELAY_QUEUE_TTL_MS, "x-dead-letter-exchange": exchange}


def dead_queue_arguments(
    ttl_ms: int = DEAD_QUEUE_TTL_MS, max_length: int = DEAD_QUEUE_MAX_LENGTH
) -> dict[str, Any]:
    """Arguments of the dead queue: bounded in length and in age."""
    return {"x-message-ttl": ttl_ms, "x-max-length": max_length}


# --- routing keys ----------------------------------------------------------------------------------------


def validate_routing_key(key: str, *, pattern: bool) -> str:
    """Return ``key`` if it is a usable routing key (``pattern=True``: a binding with ``*``/``#``).

    Raises :class:`ConfigurationError` naming the key and the rule it breaks.
    """
    what = "routing key pattern" if pattern else "routing key"
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"{what} {key!r} is empty or not a string")
    if len(key.encode()) > 255:
        raise ConfigurationError(f"{what} {key!r} is longer than AMQP's 255 bytes")
    if any(ch.isspace() for ch in key):
        raise ConfigurationError(f"{what} {key!r} contains white space")
    for word in key.split("."):
        if not word:
            raise ConfigurationError(f"{what} {key!r} has an empty word (a leading, trailing or double '.')")
        if ("*" in word or "#" in word) and (not pattern or word not in ("*", "#")):
            if pattern:
                raise ConfigurationError(
                    f"{what} {key!r}: '*' and '#' match only as a whole word between dots, not in {word!r}"
                )
            raise ConfigurationError(
                f"{what} {key!r} contains a wildcard; wildcards belong in consumer bindings, not in publishes"
            )
    return key


def logical_routing_key(
    delivery_routing_key: str, headers: Mapping[str, Any], exchange: str = "hutch"
) -> str:
    """The routing key a handler sees: the event's own, whichever path (delay, retry) it took."""
    own = headers.get(H_ROUTING_KEY)
    if isinstance(own, bytes):
        own = own.decode()
    if isinstance(own, str) and own:
        return own
    if delivery_routing_key.startswith(f"{exchange}.schedule.") or is_delay_queue_name(
        delivery_routing_key, exchange
    ):
        cc = headers.get("CC")
        if isinstance(cc, list | tuple) and cc:
            first = cc[0]
            return first.decode() if isinstance(first, bytes) else str(first)
    return delivery_routing_key


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic binding ``pattern`` matches ``key`` as RabbitMQ decides (``*`` one word, ``#`` any)."""
    return _match(pattern.split("."), key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])


def addressed_queue(
    delivery_routing_key: str, headers: Mapping[str, Any], exchange: str = "hutch"
) -> str | None:
    """The one queue a delay-queue delivery is meant for (a retry or re-park), or None for an event.

    A retry names its queue in ``CC`` while ``event-routing-key`` keeps the event's key; a delayed event
    names its routing key in both. Queues bound to ``#`` see the former too, and must leave it alone.
    """
    if not is_delay_queue_name(delivery_routing_key, exchange):
        return None
    cc = headers.get("CC")
    if not isinstance(cc, list | tuple) or not cc:
        return None
    first = cc[0].decode() if isinstance(cc[0], bytes) else str(cc[0])
    own = headers.get(H_ROUTING_KEY)
    own = own.decode() if isinstance(own, bytes) else own
    return first if isinstance(own, str) and own and first != own else None


# --- delays and retries ----------------------------------------------------------------------------------


def delay_level(delay_s: float) -> int:
    """The smallest level at least ``delay_s`` (never early); ``MAX_LEVEL`` for longer delays."""
    index = bisect.bisect_left(LEVELS, delay_s)
    return LEVELS[index] if index < len(LEVELS) else MAX_LEVEL


def delay_plan(delay_s: float, now_ms: int) -> tuple[int, int | None]:
    """The level to park a message delayed by ``delay_s`` in, and its due time when the level is short."""
    level = delay_level(delay_s)
    return level, (now_ms + math.ceil(delay_s * 1000) if is_long_delay(delay_s) else None)


def is_long_delay(delay_s: float) -> bool:
    """Whether ``delay_s`` exceeds the longest level, so the message must be re-parked until due."""
    return delay_s > MAX_LEVEL


def retry_backoff(failures: int) -> float:
    """hutch-schedule's default back-off before the next attempt: ``failures ** 4 + 2`` seconds."""
    return float(failures**4 + 2)


def failures(headers: Mapping[str, Any], routing_keys: Iterable[str], queue: str) -> int:
    """How many times this message failed before, from ``event-retries`` or else hutch-schedule's x-death."""
    own = headers.get(H_RETRIES)
    if isinstance(own, int) and not isinstance(own, bool):
        return max(own, 0)
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return 0
    ours = {*routing_keys, queue}
    total = 0
    for death in deaths:
        if not isinstance(death, Mapping):
            continue
        keys = death.get("routing-keys") or ()
        if any(key in ours for key in keys):
            count = death.get("count", 1)
            total += count if isinstance(count, int) else 1
    return total


def due_in_ms(headers: Mapping[str, Any], now_ms: int) -> int | None:
    """Milliseconds until ``event-due-at``, or None when the header is absent or unusable."""
    due = headers.get(H_DUE_AT)
    if isinstance(due, bool) or not isinstance(due, int):
        return None
    return due - now_ms


# --- headers of copies -----------------------------------------------------------------------------------


def _with_cc(headers: Mapping[str, Any] | None, cc: list[str]) -> dict[str, Any]:
    out = dict(headers or {})
    out["CC"] = cc
    return out


def delayed_headers(
    headers: Mapping[str, Any] | None, routing_key: str, *, due_at_ms: int | None
) -> dict[str, Any]:
    """Headers of a delayed event (spec section 4): ``CC`` and our routing key, no failure counted."""
    out = _with_cc(headers, [routing_key])
    out[H_ROUTING_KEY] = routing_key
    out[H_RETRIES] = 0
    if due_at_ms is not None:
        out[H_DUE_AT] = due_at_ms
    return out


def retry_headers(
    headers: Mapping[str, Any], *, failures: int, routing_key: str, queue: str, due_at_ms: int | None = None
) -> dict[str, Any]:
    """Headers of a retry copy (spec section 6): addressed to the failing queue only, failure counted."""
    out = _with_cc(headers, [queue])
    out[H_RETRIES] = failures + 1
    out[H_ROUTING_KEY] = routing_key
    out.pop(H_DUE_AT, None)
    if due_at_ms is not None:
        out[H_DUE_AT] = due_at_ms
    return out


def repark_headers(headers: Mapping[str, Any], *, queue: str, routing_key: str) -> dict[str, Any]:
    """Headers of a long-delayed message parked again until due: every header kept, sent to ``queue``."""
    out = _with_cc(headers, [queue])
    out[H_ROUTING_KEY] = routing_key
    return out


def format_error(error: BaseException | str) -> str:
    """``Type: message`` of an error, cut to at most 1 KiB of UTF-8 for the ``event-error`` header."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    raw = text.encode()
    if len(raw) <= ERROR_HEADER_LIMIT:
        return text
    return raw[: ERROR_HEADER_LIMIT - 3].decode(errors="ignore") + "..."


def dead_headers(
    headers: Mapping[str, Any],
    *,
    routing_key: str,
    queue: str,
    error: str,
    failed_at_ms: int,
    failures: int,
) -> dict[str, Any]:
    """Headers of a dead copy: the original ones but ``CC``/``BCC``, plus what an operator needs to see."""
    out = {k: v for k, v in headers.items() if k not in ("CC", "BCC")}
    out[H_ROUTING_KEY] = routing_key
    out[H_QUEUE] = queue
    out[H_ERROR] = format_error(error)
    out[H_FAILED_AT] = failed_at_ms
    out[H_RETRIES] = failures
    return out


_NOT_REQUEUED = frozenset(("x-death", "CC", "BCC", H_ERROR, H_FAILED_AT))


def requeue_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers of a dead message sent back to its queue: failure marks removed, retry count reset."""
    out = {k: v for k, v in headers.items() if k not in _NOT_REQUEUED}
    out[H_RETRIES] = 0
    return out
