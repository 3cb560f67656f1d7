"""Our AMQP driver (event.amqp) against pika's AsyncioConnection and aiormq, bare, in one run.

    python benches/driver.py [--jobs 100000] [--rounds 1] [--uvloop] [--only consume|publish]

Consume: ``--jobs`` persistent JSON messages over 5 queues (one channel each, prefetch 200), each
body decoded with orjson and a no-op coroutine run to completion, acks ``multiple`` every 50; for
(a) pika's ``AsyncioConnection`` (the issue's baseline), (b) event.amqp, (c) aiormq.
Publish: ``--jobs`` persistent JSON messages with confirms, 500 in flight, over the same 5 queues; for
pika's ``AsyncioConnection`` and event.amqp.

Each measurement runs in a subprocess of its own against the same broker (``$AMQP_URL`` or the local
one); the queues are filled beforehand by this process. Prints jobs/s and CPU µs per job (of the
client's own process), each with its ratio to pika.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

QUEUES = 5
PREFETCH = 200
ACK_EVERY = 50
IN_FLIGHT = 500
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


class Clock:
    """Wall time and this process's CPU time over the measured span: jobs/s is what the broker and the
    machine allow, CPU µs per job what the client itself costs (steady when other work shares the
    machine)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def figures(self, jobs: int) -> dict[str, float]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return {"jobs_per_s": jobs / wall, "cpu_us_per_job": cpu / jobs * 1e6}


async def noop() -> None:
    return None


def run_noop() -> None:
    """The no-op handler, run to completion without a task (it never suspends)."""
    coro = noop()
    try:  # noqa: SIM105 (contextlib.suppress costs more than the handler itself)
        coro.send(None)
    except StopIteration:
        pass


# --- the measured clients (each in its own process) ------------------------------------------------


async def consume_ours(url: str, queues: list[str], jobs: int) -> dict[str, float]:
    clock = Clock()
    from event import amqp, driver

    connection = await amqp.open_connection(url, name="bench-driver-consume", timeout=10)
    done = asyncio.get_running_loop().create_future()
    seen = 0

    async def consume(queue: str) -> None:
        channel = await connection.channel()
        await channel.basic_qos(PREFETCH)
        count = 0

        def on_delivery(delivery: driver.Delivery) -> None:
            nonlocal count, seen
            orjson.loads(delivery.body)
            run_noop()
            count += 1
            seen += 1
            if count % ACK_EVERY == 0:
                channel.basic_ack(delivery.delivery_tag, multiple=True)
            if seen == jobs and not done.done():
                done.set_result(None)

        await channel.basic_consume(queue, on_delivery)

    clock.start()
    await asyncio.gather(*(consume(q) for q in queues))
    await done
    figures = clock.figures(jobs)
    await connection.close()
    return figures


async def consume_aiormq(url: str, queues: list[str], jobs: int) -> dict[str, float]:
    clock = Clock()
    import aiormq
    import aiormq.abc

    connection = await aiormq.connect(url)
    done = asyncio.get_running_loop().create_future()
    seen = 0

    async def consume(queue: str) -> None:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=PREFETCH)
        count = 0

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal count, seen
            orjson.loads(message.body)
            run_noop()
            count += 1
            seen += 1
            if count % ACK_EVERY == 0:
                await channel.basic_ack(message.delivery_tag, multiple=True)
            if seen == jobs and not done.done():
                done.set_result(None)

        await channel.basic_consume(queue, on_message)

    clock.start()
    await asyncio.gather(*(consume(q) for q in queues))
    await done
    figures = clock.figures(jobs)
    await connection.close()
    return figures


def _pika_connection(url: str, on_open: Callable[[Any], None], failed: asyncio.Future[Any]) -> Any:
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection

    def on_error(_: Any, exc: BaseException) -> None:
        if not failed.done():
            failed.set_exception(RuntimeError(f"pika could not connect: {exc}"))

    return AsyncioConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_open_error_callback=on_error,
        custom_ioloop=asyncio.get_running_loop(),
    )


async def consume_pika(url: str, queues: list[str], jobs: int) -> dict[str, float]:
    clock = Clock()
    done = asyncio.get_running_loop().create_future()
    seen = 0

    def on_open(connection: Any) -> None:
        clock.start()
        for queue in queues:
            connection.channel(on_open_callback=lambda channel, q=queue: start(channel, q))

    def start(channel: Any, queue: str) -> None:
        count = 0

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            nonlocal count, seen
            orjson.loads(body)
            run_noop()
            count += 1
            seen += 1
            if count % ACK_EVERY == 0:
                ch.basic_ack(method.delivery_tag, multiple=True)
            if seen == jobs and not done.done():
                done.set_result(None)

        channel.basic_qos(
            prefetch_count=PREFETCH, callback=lambda _: channel.basic_consume(queue, on_message)
        )

    connection = _pika_connection(url, on_open, done)
    await done
    figures = clock.figures(jobs)
    connection.close()
    return figures


async def publish_ours(url: str, queues: list[str], jobs: int) -> dict[str, float]:
    clock = Clock()
    from event import amqp, driver

    connection = await amqp.open_connection(url, name="bench-driver-publish", timeout=10)
    channel = await connection.channel(confirms=True)
    properties = driver.Properties(content_type="application/json", delivery_mode=2)
    numbers = iter(range(jobs))

    async def worker() -> None:
        for n in numbers:
            await channel.basic_publish(
                orjson.dumps({"n": n}), routing_key=queues[n % len(queues)], properties=properties
            )

    clock.start()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    figures = clock.figures(jobs)
    await connection.close()
    return figures


async def publish_pika(url: str, queues: list[str], jobs: int) -> dict[str, float]:
    clock = Clock()
    import pika
    from pika import spec

    done = asyncio.get_running_loop().create_future()
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    outstanding: deque[int] = deque()
    state = {"sent": 0, "confirmed": 0}

    def on_open(connection: Any) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel: Any) -> None:

        def pump() -> None:
            while len(outstanding) < IN_FLIGHT and state["sent"] < jobs:
                n = state["sent"]
                channel.basic_publish("", queues[n % len(queues)], orjson.dumps({"n": n}), properties)
                state["sent"] = n + 1
                outstanding.append(n + 1)

        def on_confirm(frame: Any) -> None:
            method = frame.method
            if not isinstance(method, spec.Basic.Ack):
                done.set_exception(RuntimeError("pika: the broker nacked a publish"))
                return
            if method.multiple:
                while outstanding and outstanding[0] <= method.delivery_tag:
                    outstanding.popleft()
                    state["confirmed"] += 1
            else:
                outstanding.remove(method.delivery_tag)
                state["confirmed"] += 1
            if state["confirmed"] == jobs:
                if not done.done():
                    done.set_result(None)
                return
            pump()

        channel.confirm_delivery(on_confirm, callback=lambda _: pump())
        clock.start()

    connection = _pika_connection(url, on_open, done)
    await done
    figures = clock.figures(jobs)
    connection.close()
    return figures


PHASES: dict[str, Callable[[str, list[str], int], Any]] = {
    "consume-pika": consume_pika,
    "consume-ours": consume_ours,
    "consume-aiormq": consume_aiormq,
    "publish-pika": publish_pika,
    "publish-ours": publish_ours,
}


def child(phase: str, url: str, queues: list[str], jobs: int, use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop

        uvloop.install()
    figures = asyncio.run(PHASES[phase](url, queues, jobs))
    print(json.dumps({"phase": phase, **figures}))


# --- the conductor ---------------------------------------------------------------------------------


async def _prepare(url: str, queues: list[str], jobs: int | None, *, delete: bool = False) -> None:
    """Declare (or delete) the queues, empty them, and fill them with ``jobs`` messages if given."""
    from event import amqp, driver

    connection = await amqp.open_connection(url, name="bench-driver-fill", timeout=10)
    channel = await connection.channel(confirms=True)
    for queue in queues:
        if delete:
            await channel.queue_delete(queue)
            continue
        await channel.queue_declare(queue, durable=True)
        await channel.queue_purge(queue)
    if jobs:
        properties = driver.Properties(content_type="application/json", delivery_mode=2)
        numbers = iter(range(jobs))

        async def worker() -> None:
            for n in numbers:
                await channel.basic_publish(
                    orjson.dumps({"n": n}), routing_key=queues[n % len(queues)], properties=properties
                )

        await asyncio.gather(*(worker() for _ in range(1000)))
    await connection.close()


def _run(phase: str, url: str, queues: list[str], jobs: int, use_uvloop: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", phase, "--url", url, "--queues", ",".join(queues)]
    command += ["--jobs", str(jobs)] + (["--uvloop"] if use_uvloop else [])
    out = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{out.stderr}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--uvloop", action="store_true", help="run the measured clients on uvloop")
    parser.add_argument("--only", choices=["consume", "publish"])
    parser.add_argument("--url", default=os.environ.get("AMQP_URL") or DEFAULT_URL)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--queues", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.queues.split(","), args.jobs, args.uvloop)
        return

    queues = [f"bench-driver-{uuid.uuid4().hex[:8]}-{i}" for i in range(QUEUES)]
    runs: dict[str, list[dict[str, float]]] = {phase: [] for phase in PHASES}
    try:
        for _ in range(args.rounds):
            for phase in PHASES:
                kind = phase.split("-")[0]
                if args.only and kind != args.only:
                    continue
                asyncio.run(_prepare(args.url, queues, args.jobs if kind == "consume" else None))
                runs[phase].append(_run(phase, args.url, queues, args.jobs, args.uvloop))
                rate, cpu = runs[phase][-1]["jobs_per_s"], runs[phase][-1]["cpu_us_per_job"]
                print(f"  {phase:16} {rate:>10,.0f} jobs/s {cpu:>7.1f} CPU µs/job", file=sys.stderr)
    finally:
        asyncio.run(_prepare(args.url, queues, None, delete=True))

    figures = {
        phase: {key: statistics.median(run[key] for run in done) for key in ("jobs_per_s", "cpu_us_per_job")}
        for phase, done in runs.items()
        if done
    }
    if args.json:
        print(json.dumps({"jobs": args.jobs, "uvloop": args.uvloop, "figures": figures}))
        return
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(f"{args.jobs:,} jobs, {QUEUES} queues, {loop_name}, median of {args.rounds} round(s)")
    print(f"  {'':16} {'jobs/s':>10} {'ratio':>6}  {'CPU µs/job':>10} {'ratio':>6}")
    for kind in ("consume", "publish"):
        pika = figures.get(f"{kind}-pika")
        for phase, got in figures.items():
            if not phase.startswith(kind):
                continue
            rate, cpu = got["jobs_per_s"], got["cpu_us_per_job"]
            # Ratios read "times pika": more jobs/s, and pika's CPU per job over ours.
            speed = f"{rate / pika['jobs_per_s']:.2f}x" if pika else ""
            thrift = f"{pika['cpu_us_per_job'] / cpu:.2f}x" if pika else ""
            print(f"  {phase:16} {rate:>10,.0f} {speed:>6}  {cpu:>10.1f} {thrift:>6}")


if __name__ == "__main__":
    main()
