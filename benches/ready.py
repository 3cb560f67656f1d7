"""How long a pool of many consumers takes to become ready: cold (its queues are new) and warm (they exist).

    python benches/ready.py [--consumers 10 100 300 1000] [--loop auto|asyncio|uvloop] [--json]

For each count, a WorkerPool with that many consumers (one queue and one binding each) is started
against the broker (``$AMQP_URL`` or the local one) and timed from ``run()`` to ``ready``: first with
none of its queues declared (cold), then again with all of them there (warm). Every queue and exchange
it declared is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from event import Message, WorkerPool, topology, wire
from event.loops import resolve_loop

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def _never(ctx: object, msg: Message[Any]) -> None:
    return None


def make_pool(url: str, namespace: str, consumers: int) -> WorkerPool:
    pool = WorkerPool(url, namespace=namespace, exchange=f"{namespace}-ex", name="ready bench")
    for n in range(consumers):
        pool.consumer(f"ready.c{n}", queue=f"c{n}")(_never)
    return pool


async def time_ready(url: str, namespace: str, consumers: int) -> float:
    pool = make_pool(url, namespace, consumers)
    started = time.perf_counter()
    async with pool.running(timeout=120):
        return time.perf_counter() - started


async def clean(url: str, namespace: str, consumers: int) -> None:
    from event.amqp import open_connection

    plan = make_pool(url, namespace, consumers).topology()
    connection = await open_connection(url, name="ready bench clean-up")
    try:
        channel = await connection.channel()
        await topology.remove(channel, plan)
        await channel.exchange_delete(wire.control_exchange_name(f"{namespace}-ex"))
    finally:
        await connection.close()


async def measure(url: str, counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for consumers in counts:
        namespace = f"ready{uuid.uuid4().hex[:8]}"
        try:
            cold = await time_ready(url, namespace, consumers)
            warm = await time_ready(url, namespace, consumers)
        finally:
            await clean(url, namespace, consumers)
        rows.append({"consumers": consumers, "cold_s": cold, "warm_s": warm})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumers", type=int, nargs="+", default=[10, 100, 300, 1000])
    parser.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    loop = resolve_loop(args.loop)
    coro: Coroutine[Any, Any, list[dict[str, Any]]] = measure(url, args.consumers)
    rows = importlib.import_module("uvloop").run(coro) if loop == "uvloop" else asyncio.run(coro)
    if args.json:
        print(json.dumps({"loop": loop, "rows": rows}))
        return
    print(f"consumers ready ({loop}): cold = queues new, warm = queues there")
    for row in rows:
        print(f"  {row['consumers']:>5}  cold {row['cold_s']:6.2f} s  warm {row['warm_s']:6.2f} s")


if __name__ == "__main__":
    main()
