"""event_drain_seconds against the real broker: under a steady (rate-limited) load it predicts the drain."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support import Isolation, Probe, eventually

from event import Message, Publisher, WorkerPool
from event.endpoint import serve_endpoint
from event.metrics import exposition


def scrape(port: int) -> dict[tuple[str, str], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, s.labels.get("queue", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _empty(probe: Probe, queue: str) -> bool:
    return await probe.depth(queue) == 0


async def test_drain_seconds_predicts_how_long_the_queue_takes_to_drain(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs, depth_interval=0.25)
    queue = f"{iso.namespace}:steady"

    @pool.consumer("app.steady", rate_limit="50/s", prefetch=5)
    async def steady(ctx: object, msg: Message[Any]) -> None:
        pass

    async def metrics() -> bytes:
        return exposition(pool.registry)

    async def ready() -> bool:
        return pool.ready

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        server = await serve_endpoint("127.0.0.1", 0, metrics=metrics, ready=ready)
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.gather(*(publisher.publish("app.steady", {"n": n}) for n in range(600)))
            await asyncio.sleep(4)  # a steady pace for the rate to settle on (~50/s)
            seen = await asyncio.to_thread(scrape, port)
            asked = time.monotonic()
            predicted = seen[("event_drain_seconds", queue)]
            await eventually(lambda: _empty(probe, queue), timeout=30, interval=0.05)
            took = time.monotonic() - asked
        finally:
            server.close()
    rate = seen[("event_queue_ack_rate", queue)]
    assert 40 <= rate <= 55, rate
    assert seen[("event_queue_messages_ready", queue)] > 300
    print(f"predicted {predicted:.2f} s, took {took:.2f} s, rate {rate:.1f}/s")
    assert math.isfinite(predicted)
    assert abs(predicted - took) <= 0.25 * took, (predicted, took)
