"""The last hour of a namespace's queues, sampled by the gateway: depth and rates per queue, and per
consumer queue the messages processed, failed, retried and dead in each interval, for the dashboard's
charts. Kept in memory only (a restart starts a new hour): RabbitMQ's management API keeps just its
last minute by default, and a store of our own would be a database to run for a chart.

The outcomes come from the workers themselves (their report, :func:`event.control.report`): the broker
cannot tell them apart, since a retried or dead message is acked like a processed one, and the park and
dead queues are shared by every consumer of the namespace. Each worker reports what it counted since it
started; a sample is the increase since the previous one, per worker (host and pid), summed per queue.
A worker seen for the first time counts whole (it started since the last sample) except at the
gateway's first sample, which only sets the baseline. A worker that did not answer in time is missing
from that interval and its increase lands in the next."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from event import control

log = logging.getLogger(__name__)

INTERVAL_S = 10.0
KEPT = 360  # an hour of samples
CHARTED_ROLES = ("consumer", "dead")
CHARTED = ("processed", "failed", "retried", "dead")  # the charts' names of control.REPORTED, in its order


@dataclass(frozen=True, slots=True)
class Sample:
    """The charted queues at one time: name -> (ready, unacked, in/s, out/s); and per consumer queue the
    outcomes counted by the workers since the previous sample (absent: no worker reported it)."""

    at: float
    queues: dict[str, tuple[int, int, float, float]]
    outcomes: dict[str, tuple[int, ...]]


class History:
    """Samples ``rows()`` (the gateway's queue list) and ``reports()`` (the workers' state reports)
    every ``interval_s`` while it runs."""

    def __init__(
        self,
        rows: Callable[[], Awaitable[list[dict[str, Any]]]],
        reports: Callable[[], Awaitable[list[dict[str, Any]]]],
        *,
        interval_s: float = INTERVAL_S,
        kept: int = KEPT,
    ) -> None:
        self.rows = rows
        self.reports = reports
        # (host, pid, queue) -> the outcomes that worker reported last time; None before the first sample
        self._last: dict[tuple[str, int, str], tuple[int, ...]] | None = None
        self.interval_s = interval_s
        self.samples: deque[Sample] = deque(maxlen=kept)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling (once; later calls do nothing)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sample(self) -> None:
        """Take one sample now (skipped, with a debug line, while the broker cannot be asked)."""
        try:
            rows = await self.rows()
        except Exception as exc:  # the broker or its management API is away: a gap in the chart
            log.debug("no history sample: %s", exc)
            return
        try:
            reports = await self.reports()
        except Exception as exc:  # as above: no outcomes in this interval, counted in the next
            log.debug("no worker reports for the history: %s", exc)
            reports = None
        outcomes = self._outcomes(reports) if reports is not None else {}
        self.samples.append(
            Sample(
                time.time(),
                {
                    row["name"]: (
                        int(row["messages"]),
                        int(row["unacked"]),
                        float(row.get("publish_rate") or 0.0),
                        float(row.get("deliver_rate") or 0.0),
                    )
                    for row in rows
                    if row["role"] in CHARTED_ROLES
                },
                outcomes,
            )
        )

    def _outcomes(self, reports: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
        """Per consumer queue, what the reporting workers counted since the last sample."""
        first = self._last is None
        last = self._last or {}
        now: dict[tuple[str, int, str], tuple[int, ...]] = {}
        summed: dict[str, list[int]] = {}
        for report in reports:
            host, pid = str(report.get("host")), int(report.get("pid") or 0)
            for queue, state in (report.get("consumers") or {}).items():
                if not isinstance(state, dict):
                    continue
                counts = tuple(int(state.get(name) or 0) for name in control.REPORTED)
                key = (host, pid, queue)
                now[key] = counts
                total = summed.setdefault(queue, [0] * len(control.REPORTED))
                if first:
                    continue  # the baseline: counted before this gateway looked
                before = last.get(key, (0,) * len(control.REPORTED))
                for i, (n, b) in enumerate(zip(counts, before, strict=True)):
                    total[i] += max(0, n - b)
        # A worker missing from this answer keeps its last counts: its increase goes to the next sample.
        self._last = {**last, **now}
        return {} if first else {queue: tuple(total) for queue, total in summed.items()}

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval_s)

    def as_dict(self) -> dict[str, Any]:
        """The samples as series per queue (null where a queue was not there, or no worker reported its
        outcomes), oldest first: ready, unacked, in, out; and for consumer queues processed, failed,
        retried, dead (messages in each interval)."""
        samples = list(self.samples)
        names = sorted({name for s in samples for name in s.queues})
        series: dict[str, dict[str, list[float | None]]] = {}
        for name in names:
            values = [s.queues.get(name) for s in samples]
            series[name] = {
                key: [None if v is None else v[i] for v in values]
                for i, key in enumerate(("ready", "unacked", "in", "out"))
            }
        for name in sorted({name for s in samples for name in s.outcomes}):
            counted = [s.outcomes.get(name) for s in samples]
            row = series.setdefault(name, {})
            for i, key in enumerate(CHARTED):
                row[key] = [None if c is None else c[i] for c in counted]
        return {"interval_s": self.interval_s, "times": [s.at for s in samples], "series": series}
