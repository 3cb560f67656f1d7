"""The wire format shared with Hutch and hutch-schedule, as pure functions.

Everything here follows ``shared/spec/wire-format.md`` and is checked against its ``vectors.json``.
No I/O and no state: each rule is a small function that a test can call with plain values.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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

# The furthest a delay may reach: two years, enough for any yearly schedule with slack. Beyond it a
# delay is a wrong clock or a wrong client (a due time in the year 33,658 would be parked again every
# three hours for ever), so it is refused at publish and a message carrying one goes to the dead queue.
MAX_DELAY_S = 2 * 366 * 24 * 3600
MAX_DELAY_MS = MAX_DELAY_S * 1000

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
H_PARK_TO = "event-park-to"  # where a parked copy goes when its delay ends (see park_to_queue)
H_FOREIGN_FAILURES = "event-foreign-failures"  # hutch-schedule failures already in event-retries
H_PARK_IN = "event-park-in"  # the park queue a copy waits in (see park_entry_exchange_name)

PARK_TO_EXCHANGE = "exchange"  # event-park-to of a delayed event: routed again by its routing key

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


def runner_queue_name(routing_key: str) -> str:
    """The default queue of a proxy or command runner: its first routing key, wildcards spelled out.

    ``app.resize`` gives ``app.resize``; ``app.user.*`` gives ``app.user.any``, ``app.#`` gives ``app.all``
    (a runner has no class name for Hutch's rule to start from).
    """
    words = routing_key.split(".")
    return ".".join("any" if w == "*" else "all" if w == "#" else w for w in words)


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


def park_entry_exchange_name(exchange: str) -> str:
    """The headers exchange that delayed and retried copies enter their park queue by, e.g. ``hutch.park``.

    Each park queue is bound with ``{x-match: all, event-park-in: <its name>}``, so a copy is published
    with the event's own routing key (not the park queue's name, as through :func:`delay_exchange_name`)
    and keeps it when it dead-letters: a Ruby consumer sees the key the event was published with, and
    no topic binding (a Ruby ``*``) matches a park queue's one-word name.
    """
    return f"{exchange}.park"


def control_exchange_name(exchange: str) -> str:
    """The direct exchange carrying operators' commands (pause, resume) to workers, e.g. ``hutch.control``.

    Not the main exchange: a Hutch consumer bound with ``#`` would receive the commands as events.
    """
    return f"{exchange}.control"


def control_routing_key(namespace: str) -> str:
    """The routing key of one namespace's commands on the control exchange: its sanitised name."""
    return sanitize_namespace(namespace)


def is_delay_queue_name(name: str, exchange: str) -> bool:
    """Whether ``name`` is hutch-schedule's delay queue of some level and some namespace for ``exchange``."""
    return _is_level_queue(name, f"{exchange}_delay_queue_")


def park_queue_name(namespace: str, exchange: str, level_s: int) -> str:
    """event's own delay queue for one level, e.g. ``myapp:hutch_park_queue_5s``.

    Every copy that event makes wait (a delayed event, a retry, a re-park) waits here, never in
    hutch-schedule's delay queues: RabbitMQ keeps one ``x-death`` entry per queue and reason, with the
    routing keys of the first death only, so sharing a delay queue with hutch-schedule would hide Ruby's
    failures from its own retry counter (and ours from ours).
    """
    return queue_name(namespace, f"{exchange}_park_queue_{level_s}s")


def is_park_queue_name(name: str, exchange: str) -> bool:
    """Whether ``name`` is event's park queue of some level and some namespace for ``exchange``."""
    return _is_level_queue(name, f"{exchange}_park_queue_")


def is_reserved_queue_name(name: str, exchange: str) -> bool:
    """Whether a consumer may not take ``name``: a delay or park queue of ``exchange``."""
    return is_delay_queue_name(name, exchange) or is_park_queue_name(name, exchange)


def _is_level_queue(name: str, suffix: str) -> bool:
    head, sep, tail = name.rpartition(suffix)
    if not sep or (head and not head.endswith(":")):
        return False
    return tail.endswith("s") and tail[:-1].isdigit() and int(tail[:-1]) in LEVELS


def unpark_exchange_name(exchange: str) -> str:
    """The headers exchange park queues dead-letter into, e.g. ``hutch.unpark``.

    A copy's ``event-park-to`` header picks its way out: ``queue:<name>`` reaches that consumer queue
    alone (a retry or a re-park: no topic binding of any other client can match it), ``exchange`` goes on
    to the main exchange, routed by the event's routing key (a delayed event, seen by Ruby consumers too).
    """
    return f"{exchange}.unpark"


def schedule_exchange_name(exchange: str) -> str:
    """hutch-schedule's topic exchange, e.g. ``hutch.schedule``."""
    return f"{exchange}.schedule"


def schedule_routing_key(exchange: str, level_s: int) -> str:
    """The routing key hutch-schedule publishes a delay of ``level_s`` with, e.g. ``hutch.schedule.5s``."""
    return f"{schedule_exchange_name(exchange)}.{level_s}s"


def park_in(namespace: str, exchange: str, level_s: int, headers: dict[str, Any]) -> str:
    """Address a copy to this namespace's park queue of ``level_s``: names it in ``headers``; the exchange.

    The copy is published to the returned exchange with its event's routing key (see
    :func:`park_entry_exchange_name`).
    """
    headers[H_PARK_IN] = park_queue_name(namespace, exchange, level_s)
    return park_entry_exchange_name(exchange)


def park_to_queue(queue: str) -> str:
    """The ``event-park-to`` value (and binding argument) that addresses one consumer queue."""
    return f"queue:{queue}"


# --- queue arguments -------------------------------------------------------------------------------------


def delay_queue_arguments(exchange: str) -> dict[str, Any]:
    """Arguments of every delay queue: expire into the main exchange after at most 30 days."""
    return {"x-message-ttl": DELAY_QUEUE_TTL_MS, "x-dead-letter-exchange": exchange}


def park_queue_arguments(exchange: str, queue_type: str | None = None) -> dict[str, Any]:
    """Arguments of event's park queues: expire into the unpark exchange after at most 30 days.

    As quorum queues (a cluster) they dead-letter at least once, which RabbitMQ allows only with
    ``reject-publish`` overflow: a copy is never dropped between its delay and its queue.
    """
    arguments: dict[str, Any] = {
        "x-message-ttl": DELAY_QUEUE_TTL_MS,
        "x-dead-letter-exchange": unpark_exchange_name(exchange),
    }
    return {**arguments, **_replicated(queue_type)}


def _replicated(queue_type: str | None) -> dict[str, Any]:
    if queue_type != "quorum":
        return {}
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def park_entry_binding_arguments(park_queue: str) -> dict[str, Any]:
    """How a park queue is bound to the park entry exchange: the copies that name it in ``event-park-in``."""
    return {"x-match": "all", H_PARK_IN: park_queue}


def park_binding_arguments(queue: str) -> dict[str, Any]:
    """How a consumer queue is bound to the unpark exchange: the copies addressed to it, and no others."""
    return {"x-match": "all", H_PARK_TO: park_to_queue(queue)}


def delayed_event_binding_arguments() -> dict[str, Any]:
    """How the main exchange is bound to the unpark exchange: delayed events, routed again by topic."""
    return {"x-match": "all", H_PARK_TO: PARK_TO_EXCHANGE}


def dead_queue_arguments(
    ttl_ms: int = DEAD_QUEUE_TTL_MS, max_length: int = DEAD_QUEUE_MAX_LENGTH
) -> dict[str, Any]:
    """Arguments of the dead queue: bounded in length and in age."""
    return {"x-message-ttl": ttl_ms, "x-max-length": max_length}


def media_type(content_type: str | None) -> str:
    """The media type of a ``content_type`` property, lower-case, parameters dropped; "" for none."""
    return content_type.split(";", 1)[0].strip().lower() if content_type else ""


# --- routing keys ----------------------------------------------------------------------------------------


# Routing keys found good for a publish lately: a publisher sends to a handful, checked once each.
_GOOD_KEYS: set[str] = set()
GOOD_KEYS_KEPT = 1024


def validate_routing_key(key: str, *, pattern: bool) -> str:
    """Return ``key`` if it is a usable routing key (``pattern=True``: a binding with ``*``/``#``).

    Raises :class:`ConfigurationError` naming the key and the rule it breaks.
    """
    if not pattern and type(key) is str and key in _GOOD_KEYS:
        return key
    _check_routing_key(key, pattern)
    if not pattern:
        if len(_GOOD_KEYS) >= GOOD_KEYS_KEPT:
            _GOOD_KEYS.clear()  # a publisher of ever new keys: start again, rather than grow
        _GOOD_KEYS.add(key)
    return key


def _check_routing_key(key: str, pattern: bool) -> None:
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


def header_text(headers: Mapping[str, Any], name: str) -> str | None:
    """A header as text (AMQP clients hand long strings over as ``bytes`` or ``str``), or None."""
    value = headers.get(name)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) else None


def header_int(headers: Mapping[str, Any], name: str) -> int | None:
    """A header as an integer (a ``bool`` is not one), or None when absent or of another type."""
    value = headers.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first_cc(headers: Mapping[str, Any]) -> str | None:
    cc = headers.get("CC")
    if not isinstance(cc, list | tuple) or not cc:
        return None
    first = cc[0]
    return first.decode(errors="replace") if isinstance(first, bytes) else str(first)


def logical_routing_key(
    delivery_routing_key: str, headers: Mapping[str, Any], exchange: str = "hutch"
) -> str:
    """The routing key a handler sees: the event's own, whichever path (delay, retry) it took."""
    own = header_text(headers, H_ROUTING_KEY)
    if own:
        return own
    if delivery_routing_key.startswith(f"{exchange}.schedule.") or is_delay_queue_name(
        delivery_routing_key, exchange
    ):
        first = _first_cc(headers)
        if first is not None:
            return first
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
    """The one queue an older event's retry or re-park is meant for, or None for an event.

    Before park queues, event sent retries through hutch-schedule's delay queues with the failing
    queue's name in ``CC`` (while ``event-routing-key`` kept the event's key), so queues bound to ``#``
    saw them too and must leave them alone. Copies made since carry ``event-park-to`` and reach their
    queue alone; this rule stays for those still waiting in a delay queue during an upgrade.
    """
    if not is_delay_queue_name(delivery_routing_key, exchange):
        return None
    first = _first_cc(headers)
    own = header_text(headers, H_ROUTING_KEY)
    return first if first is not None and own and first != own else None


def schedule_copy_origin(
    delivery_routing_key: str, headers: Mapping[str, Any], exchange: str = "hutch"
) -> str | None:
    """The namespace whose hutch-schedule delay queue made this copy, or None when it is no such copy.

    hutch-schedule publishes a delayed message (or a Ruby retry) to its topic exchange, where every
    namespace that ran it has bound its delay queues: each makes a copy, and each copy reaches every
    queue bound to the key. The copies differ only in the queue their last ``x-death`` entry names
    (``""``: Ruby services without a namespace). Which copy a pool takes is :mod:`event.schedule_copies`'s
    choice; a copy whose last death is not recognised is no such copy, and is never dropped.
    """
    if not delivery_routing_key.startswith(f"{schedule_exchange_name(exchange)}."):
        return None
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
        return None
    died_in = header_text(deaths[0], "queue")
    return None if died_in is None else delay_queue_namespace(died_in, exchange)


def delay_queue_namespace(queue: str, exchange: str) -> str | None:
    """The namespace of a hutch-schedule delay queue (``""``: none), or None for another queue."""
    if not is_delay_queue_name(queue, exchange):
        return None
    head = queue.rpartition(f"{exchange}_delay_queue_")[0]
    return head[:-1] if head else ""


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


def failures(
    headers: Mapping[str, Any], routing_keys: Iterable[str], queue: str, exchange: str = "hutch"
) -> int:
    """How many times this message failed before, on event's side and on hutch-schedule's.

    ``event-retries`` counts every failure known when event last retried the message, of which
    ``event-foreign-failures`` were hutch-schedule's; hutch-schedule failures since then (a Ruby
    consumer on the same queue) are added, so a message handed between the two sides stops after at
    most both sides' limits. Without ``event-retries``: hutch-schedule's own count.
    """
    foreign = foreign_failures(headers, routing_keys, queue, exchange)
    own = header_int(headers, H_RETRIES)
    if own is None:
        return foreign
    seen = header_int(headers, H_FOREIGN_FAILURES)
    if seen is None:  # an older event (or the spec's) copy: event-retries alone is authoritative
        seen = foreign
    return max(own, 0) + max(foreign - seen, 0)


def foreign_failures(
    headers: Mapping[str, Any], routing_keys: Iterable[str], queue: str, exchange: str = "hutch"
) -> int:
    """hutch-schedule's failure count: ``x-death`` counts whose routing keys name this consumer.

    As hutch-schedule's ``MaxRetry`` counts (and so it also counts a hutch-schedule delay as a failure),
    leaving out the deaths of event's own copies: those in park queues, and those that older versions of
    event sent through hutch-schedule's delay queues by the delay exchange (event-retries counts them).
    """
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return 0
    ours = {*routing_keys, queue}
    delay_exchange = delay_exchange_name(exchange)
    total = 0
    for death in deaths:
        if not isinstance(death, Mapping):
            continue
        died_in = header_text(death, "queue") or ""
        if is_park_queue_name(died_in, exchange) or header_text(death, "exchange") == delay_exchange:
            continue
        keys = death.get("routing-keys")
        if not isinstance(keys, (list, tuple)):  # another client's malformed entry names no key of ours
            continue
        if any((key.decode(errors="replace") if isinstance(key, bytes) else key) in ours
               for key in keys if isinstance(key, (str, bytes))):  # fmt: skip
            count = header_int(death, "count")
            total += count if count is not None else 1
    return total


def due_in_ms(headers: Mapping[str, Any], now_ms: int) -> int | None:
    """Milliseconds until ``event-due-at``, or None when the header is absent or unusable."""
    due = header_int(headers, H_DUE_AT)
    return None if due is None else due - now_ms


@dataclass(frozen=True, slots=True)
class DeliveryHeaders:
    """A delivery's headers as the rules above read them, read once (see :func:`read_headers`)."""

    headers: Mapping[str, Any]
    exchange: str
    routing_key: str  # the event's own (logical_routing_key)
    addressed_queue: str | None  # the one queue an older retry is meant for (addressed_queue)
    schedule_origin: str | None  # the namespace of a hutch-schedule copy (schedule_copy_origin)
    due_at_ms: int | None  # event-due-at, when usable

    def due_in_ms(self, now_ms: int) -> int | None:
        """Milliseconds until ``event-due-at``, or None (see :func:`due_in_ms`)."""
        return None if self.due_at_ms is None else self.due_at_ms - now_ms

    def failures(self, routing_keys: Iterable[str], queue: str) -> int:
        """How many times it failed before (see :func:`failures`): counted when asked, as it walks
        ``x-death``, which a message that is not run does not need."""
        return failures(self.headers, routing_keys, queue, self.exchange)


def read_headers(
    delivery_routing_key: str, headers: Mapping[str, Any], exchange: str = "hutch"
) -> DeliveryHeaders:
    """What a consumer needs of a delivery's headers, by the rules above, in one reading."""
    return DeliveryHeaders(
        headers,
        exchange,
        logical_routing_key(delivery_routing_key, headers, exchange),
        addressed_queue(delivery_routing_key, headers, exchange),
        schedule_copy_origin(delivery_routing_key, headers, exchange),
        header_int(headers, H_DUE_AT),
    )


def beyond_horizon(headers: Mapping[str, Any], due_in: int) -> str:
    """Why a message whose ``event-due-at`` is ``due_in`` ms away (over :data:`MAX_DELAY_MS`) is refused."""
    return (
        f"header {H_DUE_AT}={headers.get(H_DUE_AT)!r} is {due_in / 86_400_000:,.0f} days ahead, beyond "
        f"the horizon of {MAX_DELAY_S // 86_400} days: the publisher's clock or client is wrong"
    )


# --- headers of copies -----------------------------------------------------------------------------------


_ROUTING_HEADERS = ("CC", "BCC")


def delayed_headers(
    headers: Mapping[str, Any] | None, routing_key: str, *, due_at_ms: int | None
) -> dict[str, Any]:
    """Headers of a delayed event (spec section 4): ``CC`` and our routing key, no failure counted.

    ``CC`` routes it by its routing key once the unpark exchange hands it to the main exchange.
    """
    out = dict(headers or {})
    out["CC"] = [routing_key]
    out[H_ROUTING_KEY] = routing_key
    out[H_RETRIES] = 0
    out[H_FOREIGN_FAILURES] = 0  # so that failures of a Ruby consumer that gets it still count
    out[H_PARK_TO] = PARK_TO_EXCHANGE
    if due_at_ms is not None:
        out[H_DUE_AT] = due_at_ms
    return out


def _addressed(headers: Mapping[str, Any], queue: str, routing_key: str) -> dict[str, Any]:
    # No CC: a Ruby consumer that later retries the message merges its headers into its own, and a CC of
    # ours beside hutch-schedule's would route its retry (seen with real Hutch).
    out = {k: v for k, v in headers.items() if k not in _ROUTING_HEADERS}
    out[H_PARK_TO] = park_to_queue(queue)
    out[H_ROUTING_KEY] = routing_key
    return out


def retry_headers(
    headers: Mapping[str, Any],
    *,
    failures: int,
    routing_key: str,
    queue: str,
    due_at_ms: int | None = None,
    foreign: int = 0,
) -> dict[str, Any]:
    """Headers of a retry copy: addressed to the failing queue alone, every failure so far counted.

    ``foreign`` is hutch-schedule's count included in ``failures`` (see :func:`failures`).
    """
    out = _addressed(headers, queue, routing_key)
    out[H_RETRIES] = failures + 1
    out[H_FOREIGN_FAILURES] = foreign
    out.pop(H_DUE_AT, None)
    if due_at_ms is not None:
        out[H_DUE_AT] = due_at_ms
    return out


def repark_headers(headers: Mapping[str, Any], *, queue: str, routing_key: str) -> dict[str, Any]:
    """Headers of a long-delayed message parked again until due: every header kept, sent to ``queue``."""
    return _addressed(headers, queue, routing_key)


def format_error(error: BaseException | str) -> str:
    """``Type: message`` of an error, cut to at most 1 KiB of UTF-8 for the ``event-error`` header."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    raw = text.encode()
    if len(raw) <= ERROR_HEADER_LIMIT:
        return text
    return raw[: ERROR_HEADER_LIMIT - 3].decode(errors="ignore") + "..."


_NOT_DEAD = frozenset((*_ROUTING_HEADERS, H_PARK_TO, H_PARK_IN))


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
    out = {k: v for k, v in headers.items() if k not in _NOT_DEAD}
    out[H_ROUTING_KEY] = routing_key
    out[H_QUEUE] = queue
    out[H_ERROR] = format_error(error)
    out[H_FAILED_AT] = failed_at_ms
    out[H_RETRIES] = failures
    return out


_NOT_REQUEUED = frozenset(("x-death", *_NOT_DEAD, H_ERROR, H_FAILED_AT, H_FOREIGN_FAILURES))


def requeue_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers of a dead message sent back to its queue: failure marks removed, retry count reset."""
    out = {k: v for k, v in headers.items() if k not in _NOT_REQUEUED}
    out[H_RETRIES] = 0
    return out


# --- deliveries that never settled (poison that kills the worker) ----------------------------------------
#
# A handler that kills its process (SIGKILL, OOM, a crashing extension) never raises, so the retry rules
# above never see it: the broker just delivers the message again, for ever on a classic queue. The
# count of such deliveries lives in the message itself (``event-deliveries``), so it survives the
# process; a redelivered message is replaced by a copy with the count raised before it runs again.

H_DELIVERIES = "event-deliveries"
DEFAULT_MAX_DELIVERIES = 5
POISON_ERROR = "WorkerDied"


def unsettled_deliveries(headers: Mapping[str, Any], *, redelivered: bool) -> int:
    """How many deliveries of this message ended without an ack, reject or copy: the count so far.

    ``event-deliveries`` carries the deliveries counted before (by the copies that replaced a
    redelivered message); ``redelivered`` adds the delivery that just ended unsettled. ``redelivered``
    also follows a lost connection with the ack in flight, a shutdown that handed back messages not
    started, and a reject: each counts as one, so the count is an upper bound of the crashes.
    """
    own = headers.get(H_DELIVERIES)
    counted = own if isinstance(own, int) and not isinstance(own, bool) and own > 0 else 0
    return counted + (1 if redelivered else 0)


def is_poison(deliveries: int, max_deliveries: int) -> bool:
    """Whether a message whose deliveries ended unsettled ``deliveries`` times goes to the dead queue."""
    return deliveries >= max_deliveries


def recount_headers(headers: Mapping[str, Any], *, deliveries: int, routing_key: str) -> dict[str, Any]:
    """Headers of the copy that replaces a redelivered message in its own queue, the count raised.

    The copy is published straight to the queue (default exchange), so its routing key is kept in
    ``event-routing-key`` and ``CC``/``BCC`` are dropped: they would route it again on that exchange.
    """
    out = {k: v for k, v in headers.items() if k not in ("CC", "BCC")}
    out[H_ROUTING_KEY] = routing_key
    out[H_DELIVERIES] = deliveries
    return out


def poison_error(deliveries: int, max_deliveries: int) -> str:
    """The ``event-error`` of a message dead-queued because its deliveries kept ending unsettled."""
    return (
        f"{POISON_ERROR}: delivered {deliveries} time(s) without being acked or failing "
        f"(max_deliveries={max_deliveries}); the worker likely died handling it (SIGKILL, out of memory, "
        f"a crash in native code), or its connection was lost each time"
    )


def broker_delivery_limit(max_deliveries: int) -> int:
    """The ``x-delivery-limit`` of a quorum consumer queue: a backstop well above our own limit.

    Our copies restart the broker's count, so it only reaches this when our own counting failed
    (or a message kept waiting through crashes); then the broker dead-letters it to our dead queue.
    """
    return 2 * max_deliveries + 10


def quorum_poison_arguments(dead_queue: str, max_deliveries: int) -> dict[str, Any]:
    """What a quorum consumer queue needs so that the broker's own limit dead-letters, never drops."""
    return {
        "x-delivery-limit": broker_delivery_limit(max_deliveries),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_queue,
    }
