"""Where a Publisher's publish with confirms spends its CPU: event bench's publish loop, alone, profiled.

    python benches/publish_profile.py [--jobs 30000] [--loop asyncio|uvloop] [--profile]

``--jobs`` publishes of ``{"n": n}`` over 5 routing keys into one durable queue, 500 in flight (as
``event bench``'s publish phase), after 2,000 to warm up. Prints the rate and the CPU µs per message
of this process; ``--profile`` adds cProfile's top functions (which slow the loop several times: read
their shares, not the rate). For a sampling profile without that distortion, run it under py-spy:
``py-spy record -f raw -o out.raw -- python benches/publish_profile.py``.

Against ``$AMQP_URL`` or the local broker, in a namespace of its own, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import os
import pstats
import resource
import time
import uuid
from collections.abc import Awaitable, Callable

from event import Publisher, amqp, topology
from event.bench_child import _in_window

WINDOW = 500
KEYS = [f"bench.publish.{k}" for k in range(5)]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(url: str, jobs: int, profile: bool) -> None:
    """Publish ``jobs`` messages and print what they cost."""
    namespace = f"profile{uuid.uuid4().hex[:8]}"
    exchange = f"{namespace}-ex"
    sink = f"{namespace}-sink"
    admin = await amqp.open_connection(url, name="publish profile admin")
    channel = await admin.channel(confirms=False)
    try:
        async with Publisher(url, namespace=namespace, exchange=exchange) as publisher:
            await channel.queue_declare(sink, durable=True)
            for key in KEYS:
                await channel.queue_bind(sink, exchange, routing_key=key)

            def one(n: int) -> Awaitable[None]:
                return publisher.publish(KEYS[n % len(KEYS)], {"n": n})

            await _in_window(2_000, WINDOW, one)
            await _measured(jobs, one, profile)
    finally:
        plan = topology.publisher_plan(namespace, exchange)
        for queue in [sink, *(q.name for q in plan.queues)]:
            await channel.queue_delete(queue)
        for declared in plan.exchanges:
            await channel.exchange_delete(declared.name)
        await admin.close()


async def _measured(jobs: int, one: Callable[[int], Awaitable[None]], profile: bool) -> None:
    profiler = cProfile.Profile() if profile else None
    cpu, wall = _cpu_seconds(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await _in_window(jobs, WINDOW, one)
    if profiler is not None:
        profiler.disable()
    cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    print(f"{jobs} publishes in {wall:.2f} s: {jobs / wall:,.0f}/s, {cpu / jobs * 1e6:.1f} µs CPU each")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions as well")
    args = parser.parse_args()
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    if args.loop == "uvloop":
        importlib.import_module("uvloop").run(run(url, args.jobs, args.profile))
    else:
        asyncio.run(run(url, args.jobs, args.profile))


if __name__ == "__main__":
    main()
