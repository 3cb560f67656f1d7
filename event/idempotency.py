"""Idempotent handlers: an opt-in middleware that runs each message once per consumer queue, best effort.

At-least-once delivery hands a consumer duplicates: after every lost connection (the broker redelivers
what was in flight), and whenever a publisher re-sends a publish whose confirm it lost. This
middleware remembers, per consumer queue, the keys of the messages it handled (the message id, or
what ``key(msg)`` returns) and acknowledges a duplicate without running the handler::

    dedupe = Idempotency(RedisStore(redis.asyncio.Redis()), window=86_400)
    pool.middleware(dedupe.middleware)
    pool.registry.register(dedupe.collector)   # its counters on the pool's /metrics

A key goes through three states in the store:

1. **claimed** before the handler runs: an atomic "set if absent" with ``claim_ttl`` (in Redis,
   ``SET key <token> NX PX claim_ttl``), so that two workers never both start it;
2. **done** once the handler returned: kept ``window`` seconds, during which a duplicate is skipped;
3. **released** when the handler raised: the claim is deleted (only if still ours), so the retry copy
   the pool publishes runs.

A duplicate that arrives while its key is claimed by a handler still running (anywhere) is not
skipped: it raises :class:`~event.Retry` (``busy_retry`` seconds, counted as an attempt). Skipping it
would lose the message whenever the running handler then fails (its retry would run, fine) *or its
worker dies* (the claim lives on until ``claim_ttl`` while the broker redelivers the message, which
would be skipped as a duplicate: lost). Retried, the duplicate comes back later and is skipped once
the first copy is done, or runs if the first copy's claim was released or expired.

It is best effort, on purpose: a duplicate is run again when it arrives after ``window``, when the
first copy's handler ran longer than ``claim_ttl``, when the store forgot the key (the in-process
store forgets at restart and beyond ``max_keys``; Redis without persistence forgets at its restart,
and evicts under ``maxmemory``), or when the store failed. The store failing is **fail open** by
default: the handler runs unguarded, a warning is logged (at most every 10 s) and
``event_idempotency_store_errors`` counts it. At-least-once already allows duplicates, while
retrying every message for as long as Redis is down would send each one, after its retries, to the
dead queue. ``fail_open=False`` raises :class:`~event.Retry` instead, for handlers where running twice
is worse than a delay or the dead queue. Every store call is bounded by ``store_timeout``.

Keys are scoped by consumer queue (two consumers of one event each run it once) and, in Redis, by the
store's ``prefix``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from event.config import check_count, check_seconds
from event.errors import ConfigurationError
from event.message import Message
from event.middleware import CallNext
from event.signals import Retry

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

DONE = "done"  # a key's value once its handler returned; a claim's value is its owner's token
WARN_EVERY_S = 10.0

Key = Callable[[Message[Any]], str | None]


class Store(Protocol):
    """Where keys are claimed, marked done and released (see the module's docstring for the states)."""

    async def claim(self, key: str, token: str, ttl: float) -> str | None:
        """Claim ``key`` for ``ttl`` seconds with ``token`` if it is absent: None; else its value now."""
        ...

    async def done(self, key: str, ttl: float) -> None:
        """Mark ``key`` done for ``ttl`` seconds."""
        ...

    async def release(self, key: str, token: str) -> None:
        """Delete ``key`` if it is still claimed with ``token``."""
        ...


class MemoryStore:
    """Keys in this process only, bounded by ``max_keys`` (the oldest go first) and by their TTLs.

    It deduplicates what reaches this one worker (redeliveries after a lost connection, a publisher's
    re-sends while it holds the queue alone), and forgets everything at restart: for a fleet, use
    :class:`RedisStore`.
    """

    def __init__(self, max_keys: int = 100_000, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = check_count("max_keys", max_keys, minimum=1)
        self.clock = clock
        self._keys: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (value, expires at)

    def __len__(self) -> int:
        return len(self._keys)

    def _live(self, key: str) -> str | None:
        found = self._keys.get(key)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self._keys[key]
            return None
        return found[0]

    def _put(self, key: str, value: str, ttl: float) -> None:
        now = self.clock()
        self._keys[key] = (value, now + ttl)
        self._keys.move_to_end(key)
        # Expired keys leave from the front (mostly the oldest), then the count bound evicts the oldest.
        while self._keys:
            oldest, (_, expires) = next(iter(self._keys.items()))
            if expires > now and len(self._keys) <= self.max_keys:
                break
            del self._keys[oldest]

    async def claim(self, key: str, token: str, ttl: float) -> str | None:
        value = self._live(key)
        if value is not None:
            return value
        self._put(key, token, ttl)
        return None

    async def done(self, key: str, ttl: float) -> None:
        self._put(key, DONE, ttl)

    async def release(self, key: str, token: str) -> None:
        if self._live(key) == token:
            del self._keys[key]


# Delete the key only while it holds our token: a claim that expired and was taken by another worker
# is theirs to release.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore:
    """Keys in Redis (``redis.asyncio``, the ``redis`` extra), shared by every worker using the same
    ``prefix``; each expires by itself (``PX``), so Redis holds at most a window's worth of keys."""

    def __init__(self, client: Redis, *, prefix: str = "event:idem:") -> None:
        self.client = client
        self.prefix = prefix
        self._release = client.register_script(_RELEASE)

    async def claim(self, key: str, token: str, ttl: float) -> str | None:
        name = self.prefix + key
        for _ in range(3):  # between a refused SET NX and the GET the key may expire or be released
            if await self.client.set(name, token, nx=True, px=_ms(ttl)):
                return None
            value = await self.client.get(name)
            if value is not None:
                return value.decode() if isinstance(value, bytes) else str(value)
        return token + "?"  # changing hands fast: another's claim, for all we can tell

    async def done(self, key: str, ttl: float) -> None:
        await self.client.set(self.prefix + key, DONE, px=_ms(ttl))

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[self.prefix + key], args=[token])


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass
class IdempotencyStats:
    """What an :class:`Idempotency` middleware counted, by consumer queue."""

    skipped: dict[str, int] = field(default_factory=dict)  # duplicates of a done key, acked unrun
    busy: dict[str, int] = field(default_factory=dict)  # duplicates of a claimed key, retried
    store_errors: dict[str, int] = field(default_factory=dict)  # store calls that failed or timed out

    @staticmethod
    def add(counts: dict[str, int], queue: str) -> None:
        """Add one to ``queue`` in ``counts``."""
        counts[queue] = counts.get(queue, 0) + 1


class IdempotencyCollector(Collector):
    """The counters of an :class:`Idempotency` middleware, built at scrape time."""

    def __init__(self, stats: IdempotencyStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        for name, text, counts in (
            ("event_duplicates_skipped", "Duplicates acked without running the handler.", self.stats.skipped),
            (
                "event_duplicates_busy",
                "Duplicates that arrived while another copy ran, retried later.",
                self.stats.busy,
            ),
            (
                "event_idempotency_store_errors",
                "Store calls that failed or timed out (the message ran unguarded, or was retried).",
                self.stats.store_errors,
            ),
        ):
            family = CounterMetricFamily(name, text, labels=["queue"])
            for queue, count in sorted(counts.items()):
                family.add_metric([queue], count)
            yield family


def message_id(msg: Message[Any]) -> str | None:
    """The default key: the message id (Hutch and event set one on every publish; retries keep it)."""
    return msg.message_id


class Idempotency:
    """The middleware (:meth:`middleware`) and its settings; see the module's docstring.

    ``key(msg)`` names a message (default: its message id); None runs it unguarded. ``window`` is how
    long a done key is remembered; ``claim_ttl`` how long a claim holds (make it longer than the
    consumer's ``timeout`` or the handler's longest run); ``busy_retry`` the delay of a duplicate that
    found its key claimed.
    """

    def __init__(
        self,
        store: Store,
        *,
        key: Key = message_id,
        window: float = 24 * 3600.0,
        claim_ttl: float = 300.0,
        busy_retry: float = 5.0,
        fail_open: bool = True,
        store_timeout: float = 1.0,
    ) -> None:
        if not callable(key):
            raise ConfigurationError(f"key must be a function of the message, not {key!r}")
        self.store = store
        self.key = key
        self.window = check_seconds("window", window, allow_zero=False)
        self.claim_ttl = check_seconds("claim_ttl", claim_ttl, allow_zero=False)
        self.busy_retry = check_seconds("busy_retry", busy_retry)
        self.fail_open = fail_open
        self.store_timeout = check_seconds("store_timeout", store_timeout, allow_zero=False)
        self.stats = IdempotencyStats()
        self.collector = IdempotencyCollector(self.stats)
        self._warned_at = -WARN_EVERY_S

    async def middleware(self, ctx: Any, msg: Message[Any], call_next: CallNext) -> Any:
        """The middleware ``(ctx, msg, call_next)``, for ``pool.middleware`` or a consumer's own."""
        name = self.key(msg)
        if name is None:
            return await call_next()
        key = f"{msg.queue}:{name}"
        token = uuid.uuid4().hex
        try:
            async with asyncio.timeout(self.store_timeout):
                held = await self.store.claim(key, token, self.claim_ttl)
        except Exception as exc:
            self._store_failed(msg, "claim", exc)
            if not self.fail_open:
                raise Retry(f"the idempotency store failed: {exc!r}", in_=self.busy_retry) from exc
            return await call_next()
        if held == DONE:
            IdempotencyStats.add(self.stats.skipped, msg.queue)
            log.debug("message %s (%s) in %s is a duplicate: skipped", name, msg.routing_key, msg.queue)
            return None
        if held is not None:
            IdempotencyStats.add(self.stats.busy, msg.queue)
            raise Retry(f"another copy of {name} is running", in_=self.busy_retry)
        try:
            result = await call_next()
        except BaseException:
            # Released, so that the retry the pool stores for this failure runs (also when cancelled by
            # a timeout or a shutdown: the broker or the retry brings the message back).
            await self._quietly(msg, "release", self.store.release(key, token))
            raise
        await self._quietly(msg, "done", self.store.done(key, self.window))
        return result

    async def _quietly(self, msg: Message[Any], what: str, call: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self.store_timeout):
                await call
        except Exception as exc:  # the claim expires after claim_ttl by itself
            self._store_failed(msg, what, exc)

    def _store_failed(self, msg: Message[Any], what: str, exc: BaseException) -> None:
        IdempotencyStats.add(self.stats.store_errors, msg.queue)
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:  # one line per outage burst, not one per message
            self._warned_at = now
            log.warning(
                "idempotency store: %s failed for message %s in %s (%s: %s); %s",
                what, msg.message_id, msg.queue, type(exc).__name__, exc,
                "running it unguarded" if self.fail_open or what != "claim" else "retrying it later",
            )  # fmt: skip


__all__ = [
    "DONE",
    "Idempotency",
    "IdempotencyCollector",
    "IdempotencyStats",
    "MemoryStore",
    "RedisStore",
    "Store",
    "message_id",
]
