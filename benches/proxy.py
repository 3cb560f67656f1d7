"""The proxy benchmark of issue 17: `event proxy` against a plain async HTTP client loop, in one run.

    python benches/proxy.py [--jobs N] [--concurrency C] [--rounds R] [--app-ms MS] [--json]

A minimal keep-alive HTTP app (aiohttp's server, in a process of its own) answers 200 to every POST,
at once or (``--app-ms``) after that long, standing for an app's own work.
In rotating turns, on the same app:

- **event**: a WorkerPool with one ``pool.proxy(...)`` consumer, ``concurrency=C``, draining a queue
  filled beforehand with N messages, timed from its first delivery to its last handled message;
- **client loop (baseline)**: C tasks POSTing the same N bodies with the same headers through one
  aiohttp session, timed from the first request to the last answer: the plain async HTTP client loop
  a Python user would write instead;
- **same-client loop**: the same loop through the proxy's own client (pyreqwest), to tell the
  framework's share from the HTTP client's.

The ratio is the baseline's time over ours (1.0: the proxy is as fast as the plain aiohttp loop);
``ratio_same_client`` is the same-client loop's time over ours.

``--breakdown`` adds two pools, to tell the proxy's cost from the consume path's: one whose plain
consumer makes the same-client loop's request itself (``pool_client``), one whose handler only
suspends once, with no HTTP at all (``pool_suspend``).

Needs the test extra (aiohttp for the app and the baseline, pyreqwest).
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
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from pyreqwest.client import Client

from event import Context, Message, WorkerPool, amqp, wire
from event.config import resolve_url
from event.publisher import properties
from event.runners.http import http_client

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


class Span:
    """One contestant's timed stretch: wall clock, this process's CPU, the app's, and the whole
    machine's (Linux's /proc; elsewhere those two read 0). What the machine spent beyond this process
    and the app is the broker's (and anything else running): on a machine whose cores the broker, the
    app and the worker share, it is what the worker's rate is up against."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, app_pid: int) -> None:
        self.app_pid = app_pid
        self.seconds = self.cpu = self.app_cpu = self.machine_cpu = 0.0

    def _read(self) -> tuple[float, float, float, float]:
        return time.perf_counter(), time.process_time(), self._app(), self._machine()

    def _app(self) -> float:
        try:
            with open(f"/proc/{self.app_pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self.TICK  # utime + stime
        except OSError:
            return 0.0

    def _machine(self) -> float:
        try:
            with open("/proc/stat") as stat:
                ticks = [int(n) for n in stat.readline().split()[1:]]
            return (sum(ticks) - ticks[3] - ticks[4]) / self.TICK  # all but idle and iowait
        except OSError:
            return 0.0

    def start(self) -> None:
        self._started = self._read()

    def stop(self) -> None:
        ended = self._read()
        self.seconds, self.cpu, self.app_cpu, self.machine_cpu = (
            end - start for end, start in zip(ended, self._started, strict=True)
        )


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


def request_headers(message_id: str) -> dict[str, str]:
    """The headers the proxy sends, as the baseline builds them for each request."""
    return {
        "Content-Type": "application/json",
        "X-Event-Routing-Key": "bench.proxy",
        "X-Event-Message-Id": message_id,
        "X-Event-Attempt": "1",
        "X-Event-Queue": "bench",
    }


async def post(session: aiohttp.ClientSession, url: str, body: bytes, message_id: str) -> None:
    """One request of the baseline's, answered 200 or an error."""
    async with session.post(
        f"{url}/jobs/bench.proxy", data=body, headers=request_headers(message_id),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as response:  # fmt: skip
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"the app answered {response.status}")


async def post_same_client(client: Client, url: str, body: bytes, message_id: str) -> None:
    """The baseline's request, through the proxy's client."""
    request = client.post(f"{url}/jobs/bench.proxy").headers(request_headers(message_id))
    async with request.body_bytes(body).build_streamed() as response:
        await response.bytes()
        if response.status != 200:
            raise RuntimeError(f"the app answered {response.status}")


async def client_loop(
    span: Span, jobs: int, concurrency: int, post_one: Callable[[bytes, str], Awaitable[None]]
) -> None:
    """Time (``span``) ``concurrency`` tasks POSTing ``jobs`` bodies, each with ``post_one(body, id)``."""
    numbers = iter(range(jobs))

    async def worker() -> None:
        for n in numbers:
            await post_one(orjson.dumps({"n": n}), str(n))

    span.start()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    span.stop()


async def same_client_loop(span: Span, url: str, jobs: int, concurrency: int) -> None:
    """Time (``span``) a plain loop on the proxy's client POSTing ``jobs`` bodies."""
    client = http_client(30)
    try:
        await client_loop(span, jobs, concurrency, lambda body, n: post_same_client(client, url, body, n))
    finally:
        await client.close()


async def baseline(span: Span, url: str, jobs: int, concurrency: int) -> None:
    """Time (``span``) a plain aiohttp loop POSTing ``jobs`` bodies."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await client_loop(span, jobs, concurrency, lambda body, n: post(session, url, body, n))


async def ours(
    span: Span, amqp_url: str, namespace: str, url: str, jobs: int, concurrency: int, handler: str = "proxy"
) -> None:
    """Time (``span``) a pool with one consumer draining ``jobs`` messages: the proxy
    (``handler="proxy"``), a plain consumer making the same-client loop's request (``"client"``), or one
    that only suspends once (``"suspend"``)."""
    queue = wire.queue_name(namespace, "bench.proxy")
    connection = await amqp.open_connection(amqp_url, name="bench-proxy-filler", timeout=10)
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
    options: dict[str, Any] = {
        "queue": "bench.proxy",
        "prefetch": concurrency * PREFETCH_PER_SLOT,
        "retries": 0,
    }
    client = http_client(30)
    proxy = None
    if handler == "proxy":
        proxy = pool.proxy("bench.proxy", to=f"{url}/jobs/{{routing_key}}", **options)
    elif handler == "client":

        @pool.consumer("bench.proxy", **options)
        async def request(ctx: Context, msg: Message[Any]) -> None:
            await post_same_client(client, url, msg.raw, msg.message_id or "")
    else:

        @pool.consumer("bench.proxy", **options)
        async def suspend(ctx: Context, msg: Message[Any]) -> None:
            await asyncio.sleep(0)

    runner = asyncio.create_task(pool.run(install_signal_handlers=False))

    def counted(outcome: str) -> int:
        return sum(sum(c.outcomes[outcome].values()) for c in pool.stats.consumers)

    try:
        # The clock starts at the first delivery: connecting and declaring the topology are left out,
        # as the baseline has neither.
        while not counted("received") and not runner.done():  # noqa: ASYNC110 (a count, not an event)
            await asyncio.sleep(0.001)
        span.start()
        while counted("handled") < jobs:
            if runner.done():
                runner.result()
                raise RuntimeError("the pool stopped before handling every job")
            await asyncio.sleep(0.01)
        span.stop()
        pool.stop()
        await runner
    finally:
        if proxy is not None:
            await proxy.close()
        await client.close()


async def cleanup(amqp_url: str, namespace: str) -> None:
    exchange = f"{namespace}-ex"
    connection = await amqp.open_connection(amqp_url, name="bench-proxy-cleanup", timeout=10)
    channel = await connection.channel()
    await channel.queue_delete(wire.queue_name(namespace, "bench.proxy"))
    for level in wire.LEVELS:
        await channel.queue_delete(wire.delay_queue_name(namespace, exchange, level))
    await channel.queue_delete(wire.dead_queue_name(namespace, exchange))
    for name in (exchange, wire.delay_exchange_name(exchange)):
        await channel.exchange_delete(name)
    await connection.close()


async def run(
    jobs: int, concurrency: int, rounds: int, app_ms: float = 0.0, breakdown: bool = False
) -> dict[str, Any]:
    amqp_url = resolve_url(None)
    namespace = f"benchproxy{uuid.uuid4().hex[:8]}"
    app, url = await start_app(app_ms / 1000)
    breakdowns = ["pool_client", "pool_suspend"] if breakdown else []
    contestants = ["event", "baseline", "same_client", *breakdowns]
    # Per contestant: wall clock, this process's CPU (steadier than the wall clock), the app's, the machine's.
    totals = {which: [0.0, 0.0, 0.0, 0.0] for which in contestants}
    try:
        share = max(1, jobs // rounds)
        for r in range(rounds):  # turns, in a rotating order: a slow spell falls on all
            for which in contestants[r % len(contestants) :] + contestants[: r % len(contestants)]:
                span = Span(app.pid)
                if which == "baseline":
                    await baseline(span, url, share, concurrency)
                elif which == "same_client":
                    await same_client_loop(span, url, share, concurrency)
                else:
                    handler = {"event": "proxy", "pool_client": "client", "pool_suspend": "suspend"}[which]
                    await ours(span, amqp_url, namespace, url, share, concurrency, handler)
                for n, value in enumerate((span.seconds, span.cpu, span.app_cpu, span.machine_cpu)):
                    totals[which][n] += value
    finally:
        app.kill()
        await app.wait()
        await cleanup(amqp_url, namespace)
    done = share * rounds
    seconds = {which: total[0] for which, total in totals.items()}
    result: dict[str, Any] = {
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "jobs": done,
        "concurrency": concurrency,
        "app_ms": app_ms,
        "ratio": seconds["baseline"] / seconds["event"],
        "ratio_same_client": seconds["same_client"] / seconds["event"],
        "cores": os.cpu_count(),
    }
    for which, (wall, cpu, app_cpu, machine_cpu) in totals.items():
        result[f"{which}_jobs_per_s"] = done / wall
        result[f"{which}_cpu_us_per_job"] = cpu / done * 1e6
        result[f"{which}_app_cpu_us_per_job"] = app_cpu / done * 1e6
        # the broker's and anything else's: the machine's CPU beyond this process's and the app's
        result[f"{which}_rest_cpu_us_per_job"] = max(0.0, machine_cpu - cpu - app_cpu) / done * 1e6
        result[f"{which}_machine_busy"] = machine_cpu / wall / (os.cpu_count() or 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="requests per contestant (default: 20000)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default: 50)")
    parser.add_argument("--rounds", type=int, default=10, help="turns each contestant takes (default: 10)")
    parser.add_argument(
        "--app-ms", type=float, default=0.0, help="the app's own time per request (default: 0)"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also a pool making the request itself, and one not at all"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("EVENT_LOG_LEVEL", "WARNING").upper())
    try:  # both contestants run on the loop `event` itself picks: uvloop when installed
        import uvloop

        result = uvloop.run(run(args.jobs, args.concurrency, args.rounds, args.app_ms, args.breakdown))
    except ImportError:
        result = asyncio.run(run(args.jobs, args.concurrency, args.rounds, args.app_ms, args.breakdown))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['jobs']} POSTs at concurrency {args.concurrency} to a keep-alive aiohttp app taking "
          f"{args.app_ms:g} ms, loop: {result['loop']}")  # fmt: skip
    print(f"  event proxy   {result['event_jobs_per_s']:8.0f} jobs/s")
    print(f"  client loop   {result['baseline_jobs_per_s']:8.0f} requests/s   ratio {result['ratio']:.2f}"
          "   (aiohttp)")  # fmt: skip
    print(f"  same client   {result['same_client_jobs_per_s']:8.0f} requests/s   ratio "
          f"{result['ratio_same_client']:.2f}   (pyreqwest, the proxy's)")  # fmt: skip
    print("  CPU per job (us): this process / the app / the rest (the broker) / the machine busy")
    for which, what in (
        ("event", "event proxy"),
        ("baseline", "client loop"),
        ("same_client", "same client"),
        ("pool_client", "a pool making the same-client request itself"),
        ("pool_suspend", "a pool, no HTTP"),
    ):
        if f"{which}_jobs_per_s" not in result:
            continue
        cpu, app_cpu, rest = (result[f"{which}_{part}cpu_us_per_job"] for part in ("", "app_", "rest_"))
        print(f"    {what}: {result[f'{which}_jobs_per_s']:.0f} jobs/s, "
              f"{cpu:.0f} / {app_cpu:.0f} / {rest:.0f}, {result[f'{which}_machine_busy']:.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
