"""The proxy benchmark of issue 17: `event proxy` against a plain async HTTP client loop, in one run.

    python benches/proxy.py [--jobs N] [--concurrency C] [--rounds R] [--app-ms MS] [--json]

A minimal keep-alive HTTP app (aiohttp's server, in a process of its own) answers 200 to every POST,
at once or (``--app-ms``) after that long, standing for an app's own work.
In rotating turns, on the same app:

- **event**: a WorkerPool with one ``pool.proxy(...)`` consumer, ``concurrency=C``, draining a queue
  filled beforehand with N messages, timed from its first delivery to its last handled message;
- **client loop (baseline)**: C tasks POSTing the same N bodies with the same headers through one
  aiohttp session, timed from the first request to the last answer: what the proxy can at best be.

The ratio is the baseline's time over ours (1.0: the proxy costs nothing over the HTTP requests).
The broker is ``$AMQP_URL`` or the local one; the queues it makes are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
import uuid
from typing import Any

import aiohttp
import orjson

from event import WorkerPool, amqp, wire
from event.config import resolve_url
from event.publisher import properties

PREFETCH_PER_SLOT = 4  # what `event proxy` chooses when --prefetch is not given
APP = """
import asyncio, sys
from aiohttp import web

PAUSE = float(sys.argv[2])

async def job(request):
    await request.read()
    if PAUSE:
        await asyncio.sleep(PAUSE)
    return web.Response(text="ok")

app = web.Application()
app.router.add_post("/jobs/{key}", job)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_app(pause_s: float) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    app = await asyncio.create_subprocess_exec(sys.executable, "-c", APP, str(port), str(pause_s))
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            async with aiohttp.ClientSession() as session, session.post(f"{url}/jobs/up") as response:
                if response.status == 200:
                    return app, url
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    app.kill()
    raise RuntimeError("the benchmark's HTTP app did not start")


async def baseline(url: str, jobs: int, concurrency: int) -> tuple[float, float]:
    """Seconds (wall clock, then CPU) for a plain aiohttp loop to POST ``jobs`` bodies."""
    numbers = iter(range(jobs))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            for n in numbers:
                headers = {
                    "Content-Type": "application/json",
                    "X-Event-Routing-Key": "bench.proxy",
                    "X-Event-Message-Id": str(n),
                    "X-Event-Attempt": "1",
                    "X-Event-Queue": "bench",
                }
                async with session.post(
                    f"{url}/jobs/bench.proxy", data=orjson.dumps({"n": n}), headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:  # fmt: skip
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"the app answered {response.status}")

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, time.process_time() - cpu_started


async def ours(amqp_url: str, namespace: str, url: str, jobs: int, concurrency: int) -> tuple[float, float]:
    """Seconds (wall clock, then CPU) for a pool with one proxy consumer to drain ``jobs`` messages."""
    queue = wire.queue_name(namespace, "bench.proxy")
    connection = await amqp.connect(amqp_url, name="bench-proxy-filler", timeout=10)
    channel = await connection.channel(confirms=True)
    await channel.queue_declare(queue, durable=True)
    for start in range(0, jobs, 2000):
        await asyncio.gather(*(
            channel.basic_publish(
                orjson.dumps({"n": n}), exchange="", routing_key=queue, properties=properties()
            )
            for n in range(start, min(start + 2000, jobs))
        ))  # fmt: skip
    await connection.close()
    pool = WorkerPool(amqp_url, namespace=namespace, exchange=f"{namespace}-ex", concurrency=concurrency)
    proxy = pool.proxy("bench.proxy", queue="bench.proxy", to=f"{url}/jobs/{{routing_key}}",
                       prefetch=concurrency * PREFETCH_PER_SLOT, retries=0)  # fmt: skip
    runner = asyncio.create_task(pool.run(install_signal_handlers=False))

    def counted(outcome: str) -> int:
        return sum(sum(c.outcomes[outcome].values()) for c in pool.stats.consumers)

    try:
        # The clock starts at the first delivery: connecting and declaring the topology are left out,
        # as the baseline has neither.
        while not counted("received") and not runner.done():  # noqa: ASYNC110 (a count, not an event)
            await asyncio.sleep(0.001)
        started, cpu_started = time.perf_counter(), time.process_time()
        while counted("handled") < jobs:
            if runner.done():
                runner.result()
                raise RuntimeError("the pool stopped before handling every job")
            await asyncio.sleep(0.01)
        pool.stop()
        await runner
        return time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await proxy.close()


async def cleanup(amqp_url: str, namespace: str) -> None:
    exchange = f"{namespace}-ex"
    connection = await amqp.connect(amqp_url, name="bench-proxy-cleanup", timeout=10)
    channel = await connection.channel()
    await channel.queue_delete(wire.queue_name(namespace, "bench.proxy"))
    for level in wire.LEVELS:
        await channel.queue_delete(wire.delay_queue_name(namespace, exchange, level))
    await channel.queue_delete(wire.dead_queue_name(namespace, exchange))
    for name in (exchange, wire.delay_exchange_name(exchange)):
        await channel.exchange_delete(name)
    await connection.close()


async def run(jobs: int, concurrency: int, rounds: int, app_ms: float = 0.0) -> dict[str, Any]:
    amqp_url = resolve_url(None)
    namespace = f"benchproxy{uuid.uuid4().hex[:8]}"
    app, url = await start_app(app_ms / 1000)
    seconds = {"event": 0.0, "baseline": 0.0}
    cpu = {"event": 0.0, "baseline": 0.0}  # this process's CPU time, steadier than the wall clock
    try:
        share = max(1, jobs // rounds)
        for r in range(rounds):  # turns, in a rotating order: a slow spell falls on both
            order = ("event", "baseline") if r % 2 == 0 else ("baseline", "event")
            for which in order:
                if which == "event":
                    wall, used = await ours(amqp_url, namespace, url, share, concurrency)
                else:
                    wall, used = await baseline(url, share, concurrency)
                seconds[which] += wall
                cpu[which] += used
    finally:
        app.kill()
        await app.wait()
        await cleanup(amqp_url, namespace)
    done = share * rounds
    return {
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "jobs": done,
        "concurrency": concurrency,
        "app_ms": app_ms,
        "event_jobs_per_s": done / seconds["event"],
        "baseline_jobs_per_s": done / seconds["baseline"],
        "ratio": seconds["baseline"] / seconds["event"],
        "event_cpu_us_per_job": cpu["event"] / done * 1e6,
        "baseline_cpu_us_per_job": cpu["baseline"] / done * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="requests per contestant (default: 20000)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default: 50)")
    parser.add_argument("--rounds", type=int, default=10, help="turns each contestant takes (default: 10)")
    parser.add_argument(
        "--app-ms", type=float, default=0.0, help="the app's own time per request (default: 0)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("EVENT_LOG_LEVEL", "WARNING").upper())
    try:  # both contestants run on the loop `event` itself picks: uvloop when installed
        import uvloop

        result = uvloop.run(run(args.jobs, args.concurrency, args.rounds, args.app_ms))
    except ImportError:
        result = asyncio.run(run(args.jobs, args.concurrency, args.rounds, args.app_ms))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['jobs']} POSTs at concurrency {args.concurrency} to a keep-alive aiohttp app taking "
          f"{args.app_ms:g} ms, loop: {result['loop']}")  # fmt: skip
    print(f"  event proxy   {result['event_jobs_per_s']:8.0f} jobs/s")
    print(f"  client loop   {result['baseline_jobs_per_s']:8.0f} requests/s   ratio {result['ratio']:.2f}")
    print(f"  CPU per job   {result['event_cpu_us_per_job']:8.0f} us (event), "
          f"{result['baseline_cpu_us_per_job']:.0f} us (client loop)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
