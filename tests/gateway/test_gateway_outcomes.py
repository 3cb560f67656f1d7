"""The workers' state reports, as `event serve` reads them: per consumer queue the messages processed,
failed, retried and dead in each history interval (what the workers counted, summed), and in the
workers view each worker's pid, version and, per consumer, handlers in flight and paused."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from support import Isolation, Management, eventually

from event import Message, Publisher, WorkerPool
from event.control import VERSION
from event.gateway.backend import Backend, GatewayConfig
from event.signals import Dead, Retry

pytestmark = pytest.mark.timeout(120)


async def test_history_charts_each_consumers_outcomes_from_the_workers_reports(
    amqp_url: str, iso: Isolation, management: Management
) -> None:
    pool = WorkerPool(amqp_url, namespace=iso.namespace, exchange=iso.exchange)
    mixed, calm = f"{iso.namespace}:mixed", f"{iso.namespace}:calm"

    @pool.consumer("hist.mixed", queue="mixed")
    async def handle_mixed(ctx: object, msg: Message[Any]) -> None:
        kind = msg.body["kind"]
        if kind == "dead":
            raise Dead(f"no use: {msg.body['id']}")
        if kind == "retry" and msg.attempt == 1:
            raise Retry("not yet", in_=1)

    @pool.consumer("hist.calm", queue="calm")
    async def handle_calm(ctx: object, msg: Message[Any]) -> None:
        pass

    backend = Backend(
        GatewayConfig.create(
            amqp_url, namespace=iso.namespace, exchange=iso.exchange, management_url=management.base
        )
    )
    history = backend.history
    try:
        assert await backend.reports() == []  # nothing runs: nobody to ask, and no wait
        async with pool.running(), Publisher(amqp_url, namespace=iso.namespace, exchange=iso.exchange) as pub:
            await history.sample()  # the baseline: what the workers counted before now is not charted
            kinds = ["ok"] * 6 + ["dead"] * 2 + ["retry"] * 3
            for i, kind in enumerate(kinds):
                await pub.publish("hist.mixed", {"id": i, "kind": kind})
            for i in range(4):
                await pub.publish("hist.calm", {"id": i})

            stats = {c.queue: c for c in pool.stats.consumers}

            async def settled() -> bool:  # the retried ones came back from their park queue and passed
                return sum(stats[mixed].outcomes["handled"].values()) == 9 and (
                    sum(stats[calm].outcomes["handled"].values()) == 4
                )

            await eventually(settled, timeout=60)
            await history.sample()
            await history.sample()  # nothing happened since: zeros, not the totals again

            [report] = await backend.reports()
            assert report["pid"] == os.getpid() and report["version"] == VERSION
            assert report["consumers"][mixed] == {
                "handled": 9, "failed": 5, "retried": 3, "dead": 2, "in_flight": 0, "paused": False,
            }  # fmt: skip

            # The workers view carries the report: pid, version, per consumer in flight and paused.
            await pool.pause(calm)

            async def reported() -> list[dict[str, Any]]:
                return [w for w in await backend.workers() if w["pid"] is not None]

            async def one_reported() -> bool:
                return len(await reported()) == 1

            await eventually(one_reported, timeout=15)
            [worker] = await reported()
            assert worker["pid"] == os.getpid() and worker["version"] == VERSION and worker["hostname"]
            assert worker["consumers"] == [
                {"queue": calm, "in_flight": 0, "paused": True},
                {"queue": mixed, "in_flight": 0, "paused": False},
            ]
            await pool.resume(calm)

        series = history.as_dict()["series"]
        # One sample of the baseline (none counted), one with everything, one with nothing new.
        assert series[mixed]["processed"] == [None, 9, 0]
        assert series[mixed]["failed"] == [None, 5, 0]
        assert series[mixed]["retried"] == [None, 3, 0]
        assert series[mixed]["dead"] == [None, 2, 0]
        assert series[calm]["processed"] == [None, 4, 0] and series[calm]["dead"] == [None, 0, 0]
        assert series[mixed]["ready"][-1] == 0  # the depth stays charted beside them

        # A worker that stopped answers no more: its queue has no outcomes in that interval.
        await history.sample()
        assert history.as_dict()["series"][mixed]["processed"][-1] is None
    finally:
        await backend.close()
        await asyncio.sleep(0)
