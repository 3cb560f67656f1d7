"""Prometheus metrics, counted on the hot path as plain integers and read at scrape time.

A handler's message is counted with a dict lookup and an integer add: no lock, no prometheus-client
call per message (the event loop is one thread). :class:`PoolCollector` turns the counts into metric
families when ``/metrics`` is scraped, on a registry the pool owns, so two pools in one process never
share a metric. Labels are bounded: consumer queue and routing key, both named by the application.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from event.drain import QueueDepth, drain_seconds

OUTCOMES = ("received", "handled", "failed", "retried", "dead", "reparked", "recounted", "duplicate")
# The outcomes that take a delivery off its queue (an ack, after the handler or after a copy was stored).
SETTLED = ("handled", "retried", "dead", "reparked", "recounted", "duplicate")
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONFIRM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Histogram:
    """Bucket counts and a sum, as cheap to observe as a bisect."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets in Prometheus' form, ``+Inf`` last."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass
class ConsumerStats:
    """What one consumer counted: outcomes by routing key, handler durations, its limit."""

    queue: str
    limit: int
    outcomes: dict[str, dict[str, int]] = field(default_factory=lambda: {o: {} for o in OUTCOMES})
    durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    in_flight: Callable[[], int] = lambda: 0
    consuming: bool = False  # the broker delivers its queue to us now (False: see the pool's log)
    restarts: int = 0  # times the broker cancelled it or closed its channel and it consumed again
    paused: Callable[[], bool] = lambda: False
    depth: QueueDepth = field(default_factory=QueueDepth)  # the autoscaling signal (event.drain)

    def settled(self) -> int:
        """Deliveries this worker took off the queue so far (see :data:`SETTLED`)."""
        return sum(sum(self.outcomes[outcome].values()) for outcome in SETTLED)

    def count(self, outcome: str, routing_key: str) -> None:
        """Add one message to ``outcome`` for ``routing_key``."""
        counts = self.outcomes[outcome]
        counts[routing_key] = counts.get(routing_key, 0) + 1


@dataclass
class PublishStats:
    """What a publisher (or the pool's copy sender) counted."""

    published: dict[str, int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    confirm: Histogram = field(default_factory=lambda: Histogram(CONFIRM_BUCKETS))
    resent: int = 0  # publishes sent again after their connection died unconfirmed: possible duplicates

    def ok(self, exchange: str, seconds: float) -> None:
        """A publish the broker confirmed after ``seconds``."""
        self.published[exchange] = self.published.get(exchange, 0) + 1
        self.confirm.observe(seconds)

    def failed(self, exchange: str, error: BaseException) -> None:
        """A publish that raised."""
        key = (exchange, type(error).__name__)
        self.failures[key] = self.failures.get(key, 0) + 1


@dataclass
class PoolStats:
    """Everything a pool counts; the source of :class:`PoolCollector`."""

    concurrency: int = 0
    consumers: list[ConsumerStats] = field(default_factory=list)
    publish: PublishStats = field(default_factory=PublishStats)
    reconnects: int = 0
    connected: bool = False
    publish_channel_reopens: int = 0  # the channel of retry and dead copies, closed by the broker


class PoolCollector(Collector):
    """Builds the metric families from a :class:`PoolStats` at scrape time."""

    def __init__(self, stats: PoolStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        for outcome in OUTCOMES:
            family = CounterMetricFamily(
                f"event_messages_{outcome}",
                f"Messages {outcome}, by consumer queue.",
                labels=["queue", "routing_key"],
            )
            for consumer in stats.consumers:
                for routing_key, count in consumer.outcomes[outcome].items():
                    family.add_metric([consumer.queue, routing_key], count)
            yield family
        durations = HistogramMetricFamily(
            "event_handler_duration_seconds", "Time a handler (with its middleware) ran.", labels=["queue"]
        )
        in_flight = GaugeMetricFamily("event_handlers_in_flight", "Handlers running now.", labels=["queue"])
        limits = GaugeMetricFamily(
            "event_consumer_concurrency_limit", "max_concurrency of a consumer (0: none).", labels=["queue"]
        )
        consuming = GaugeMetricFamily(
            "event_consumer_consuming",
            "1 while the broker delivers the queue to its consumer.",
            labels=["queue"],
        )
        restarts = CounterMetricFamily(
            "event_consumer_restarts",
            "Times the broker cancelled a consumer or closed its channel and the pool consumed again.",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "event_consumer_paused", "1 while the consumer is paused (pool.pause).", labels=["queue"]
        )
        for consumer in stats.consumers:
            durations.add_metric([consumer.queue], consumer.durations.buckets(), consumer.durations.total)
            in_flight.add_metric([consumer.queue], consumer.in_flight())
            limits.add_metric([consumer.queue], consumer.limit)
            consuming.add_metric([consumer.queue], int(consumer.consuming))
            restarts.add_metric([consumer.queue], consumer.restarts)
            paused.add_metric([consumer.queue], int(consumer.paused()))
        yield from (durations, in_flight, limits, consuming, restarts, paused)
        yield from drain_families(stats.consumers, time.monotonic())
        yield GaugeMetricFamily(
            "event_pool_concurrency_limit", "Pool-wide concurrency (0: none).", stats.concurrency
        )
        yield from publish_families(stats.publish)
        yield CounterMetricFamily(
            "event_reconnects", "Times the pool reconnected to the broker.", stats.reconnects
        )
        yield GaugeMetricFamily("event_connected", "1 while connected and consuming.", int(stats.connected))
        yield CounterMetricFamily(
            "event_publish_channel_reopens",
            "Times the broker closed the channel of retry and dead copies and the pool opened another.",
            stats.publish_channel_reopens,
        )


def drain_families(consumers: Iterable[ConsumerStats], now: float) -> Iterable[Metric]:
    """The autoscaling signal of each consumer queue (see :mod:`event.drain`)."""
    ready = GaugeMetricFamily(
        "event_queue_messages_ready",
        "Messages ready in the consumer queue at the worker's last passive declare.",
        labels=["queue"],
    )
    rate = GaugeMetricFamily(
        "event_queue_ack_rate",
        "Deliveries of the queue this worker settled per second over the last minute.",
        labels=["queue"],
    )
    drain = GaugeMetricFamily(
        "event_drain_seconds",
        "Messages ready / this worker's ack rate: 0 when none is ready, +Inf at rate 0.",
        labels=["queue"],
    )
    for consumer in consumers:
        depth = consumer.depth
        recent = depth.rate.rate(now, consumer.settled())
        rate.add_metric([consumer.queue], recent)
        if depth.ready is not None:  # not known yet, or the queue did not answer the last poll
            ready.add_metric([consumer.queue], depth.ready)
            drain.add_metric([consumer.queue], drain_seconds(depth.ready, recent))
    return (ready, rate, drain)


def publish_families(stats: PublishStats) -> Iterable[Metric]:
    """The metric families of publishing."""
    published = CounterMetricFamily(
        "event_published", "Messages published and confirmed.", labels=["exchange"]
    )
    for exchange, count in stats.published.items():
        published.add_metric([exchange], count)
    failures = CounterMetricFamily(
        "event_publish_failures", "Publishes that raised, by error type.", labels=["exchange", "error"]
    )
    for (exchange, error), count in stats.failures.items():
        failures.add_metric([exchange, error], count)
    confirm = HistogramMetricFamily(
        "event_publish_confirm_seconds", "Time from publish to the broker's confirm."
    )
    confirm.add_metric([], stats.confirm.buckets(), stats.confirm.total)
    resent = CounterMetricFamily(
        "event_publish_resent",
        "Publishes sent again after the connection died before their confirm (possible duplicates).",
        stats.resent,
    )
    return (published, failures, confirm, resent)


def registry_for(stats: PoolStats) -> CollectorRegistry:
    """A registry of its own holding the pool's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(stats))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(registry)
