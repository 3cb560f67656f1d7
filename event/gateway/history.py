"""The last hour of a namespace's queues, sampled by the gateway: depth and rates per queue, for the
dashboard's charts. Kept in memory only (a restart starts a new hour): RabbitMQ's management API keeps
just its last minute by default, and a store of our own would be a database to run for a chart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("event.gateway")

INTERVAL_S = 10.0
KEPT = 360  # an hour of samples
CHARTED_ROLES = ("consumer", "dead")


@dataclass(frozen=True, slots=True)
class Sample:
    """The charted queues at one time: name -> (ready, unacked, in/s, out/s)."""

    at: float
    queues: dict[str, tuple[int, int, float, float]]


class History:
    """Samples ``rows()`` (the gateway's queue list) every ``interval_s`` while it runs."""

    def __init__(
        self,
        rows: Callable[[], Awaitable[list[dict[str, Any]]]],
        *,
        interval_s: float = INTERVAL_S,
        kept: int = KEPT,
    ) -> None:
        self.rows = rows
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
            )
        )

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval_s)

    def as_dict(self) -> dict[str, Any]:
        """The samples as series per queue (null where a queue was not there), oldest first."""
        samples = list(self.samples)
        names = sorted({name for s in samples for name in s.queues})
        series: dict[str, dict[str, list[float | None]]] = {}
        for name in names:
            values = [s.queues.get(name) for s in samples]
            series[name] = {
                key: [None if v is None else v[i] for v in values]
                for i, key in enumerate(("ready", "unacked", "in", "out"))
            }
        return {"interval_s": self.interval_s, "times": [s.at for s in samples], "series": series}
