"""Per-outcome counts of the runners (HTTP statuses, exit codes), served on the pool's ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

METRIC = "event_runner_outcomes"


class OutcomeCounts(Collector):
    """What the runners of one pool saw, by consumer queue and outcome, as one counter.

    Outcomes are bounded: ``"200"``, ``"503"`` (HTTP statuses), ``"exit 0"``, ``"signal 9"``, and the
    words ``"timeout"``, ``"unreachable"``, ``"held back"`` (not sent: the app was found down a moment
    ago), ``"bad headers"`` (not sent: the message's id or routing key cannot be an HTTP header) and
    ``"bad args"``. Counting is a dict add on the event loop;
    the metric family is built at scrape time, as the pool's own collector does.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, queue: str, outcome: str) -> None:
        """Add one to ``outcome`` of ``queue``."""
        key = (queue, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            METRIC,
            "Answers of proxied HTTP apps and exits of commands, by consumer queue.",
            labels=["queue", "outcome"],
        )
        for (queue, outcome), count in sorted(self.counts.items()):
            family.add_metric([queue, outcome], count)
        yield family
