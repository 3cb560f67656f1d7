"""Mixed work: most messages quick, now and then a slow one, as consumers really see it.

    python benches/mixed.py [--jobs 20000] [--slow-every 100] [--slow-s 1.0] [--prefetch 100]
                            [--rounds 3] [--loop auto|asyncio|uvloop] [--json]

The seed benchmark (`event bench`) gives every handler the same no-op work, which hid that one slow
message could hold up everything finished behind it (the acks waited for it and filled the prefetch).
Here one message in ``--slow-every`` sleeps ``--slow-s`` seconds (an HTTP call waiting for its timeout,
a big report) and the rest are no-ops, over one queue at ``--prefetch``:

- ``event``: a WorkerPool consumer, ``prefetch`` and ``max_concurrency`` both ``--prefetch``, full
  dispatch (context, middleware, batched acks);
- ``pika``: pika's ``AsyncioConnection`` consuming the same way a pika user would write it for async
  handlers: a task per slow message, each message acked alone when its handler is done.

Throughput should be set by concurrency: ``--prefetch`` slots, each slow message holding one for
``--slow-s``, so about ``prefetch / (slow_s / slow_every)`` messages a second, whoever consumes. Each
contestant runs in a process of its own on messages published for it just before; the order rotates
by round so that a slow spell of the shared machine falls on both. Prints each rate, CPU µs per message
and event's ratio to pika (above 1: event is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson

from event import Message, WorkerPool, wire
from event.bench_child import Span, message_properties
from event.loops import resolve_loop

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
SYSTEMS = ("event", "pika")


async def _never_called(ctx: object, msg: Message[Any]) -> None:
    raise AssertionError("the parent's pool only plans")


def is_slow(body: bytes, slow_every: int) -> bool:
    n: int = orjson.loads(body)["n"]
    return n % slow_every == slow_every - 1


# --- the contestants, each in a child process ---------------------------------------------------------------


def event_pool(url: str, namespace: str) -> WorkerPool:
    """The contestant's pool (the parent builds one too, for its queue's exact arguments)."""
    return WorkerPool(url, namespace=namespace, exchange=f"{namespace}-ex", name="mixed bench", concurrency=0)


async def consume_event(url: str, namespace: str, args: argparse.Namespace) -> Span:
    pool = event_pool(url, namespace)
    span = Span()
    count = 0

    @pool.middleware
    async def mark(ctx: object, msg: Message[Any], call_next: Any) -> Any:
        return await call_next()

    @pool.consumer("bench.mixed", queue="mixed", prefetch=args.prefetch, max_concurrency=args.prefetch)
    async def job(ctx: object, msg: Message[Any]) -> None:
        nonlocal count
        if not count:
            span.start()
        if msg.body["n"] % args.slow_every == args.slow_every - 1:
            await asyncio.sleep(args.slow_s)
        count += 1
        if count == args.jobs:
            pool.stop()

    await pool.run(install_signal_handlers=False)
    if count != args.jobs:
        raise RuntimeError(f"event handled {count} of {args.jobs}")
    return span.stop()


async def consume_pika(url: str, queue: str, args: argparse.Namespace) -> Span:
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection
    from pika.channel import Channel
    from pika.spec import Basic, BasicProperties

    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    span = Span()
    count = 0
    tasks: set[asyncio.Task[None]] = set()

    def done(channel: Channel, tag: int) -> None:
        nonlocal count
        channel.basic_ack(tag)
        count += 1
        if count == args.jobs:
            connection.close()

    async def slow(channel: Channel, tag: int) -> None:
        await asyncio.sleep(args.slow_s)
        done(channel, tag)

    def on_message(channel: Channel, deliver: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        if not count and not span.seconds:
            span.start()
        tag = deliver.delivery_tag
        assert tag is not None
        if is_slow(body, args.slow_every):
            task = loop.create_task(slow(channel, tag))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            done(channel, tag)

    def on_channel(channel: Channel) -> None:
        channel.basic_qos(
            prefetch_count=args.prefetch, callback=lambda _: channel.basic_consume(queue, on_message)
        )

    def on_open(connection: AsyncioConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_close(connection: AsyncioConnection, reason: BaseException) -> None:
        if not closed.done():
            if count == args.jobs:
                closed.set_result(None)
            else:
                closed.set_exception(reason)

    def on_open_error(connection: AsyncioConnection, error: BaseException) -> None:
        closed.set_exception(error)

    connection = AsyncioConnection(
        pika.URLParameters(url), on_open, on_open_error, on_close, custom_ioloop=loop
    )
    await closed
    return span.stop()


def child(args: argparse.Namespace) -> None:
    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    if args.system == "event":
        measure = functools.partial(consume_event, url, args.namespace, args)
    else:
        measure = functools.partial(consume_pika, url, args.queue, args)
    if args.loop == "uvloop":
        span: Span = importlib.import_module("uvloop").run(measure())
    else:
        span = asyncio.run(measure())
    loop = args.loop
    print(json.dumps({"seconds": span.seconds, "cpu_seconds": span.cpu_seconds, "loop": loop}))


# --- the parent ------------------------------------------------------------------------------------------


def fill(channel: Any, queue: str, jobs: int) -> None:
    import pika

    for n in range(jobs):
        channel.basic_publish("", queue, orjson.dumps({"n": n}), pika.BasicProperties(**message_properties()))
    deadline = time.monotonic() + 60
    while channel.queue_declare(queue, durable=True, passive=True).method.message_count < jobs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the broker does not hold the {jobs} messages published to {queue}")
        time.sleep(0.02)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pika

    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    loop = resolve_loop(args.loop)
    namespace = f"mixed{uuid.uuid4().hex[:8]}"
    event_queue = wire.queue_name(namespace, "mixed")
    pika_queue = f"{namespace}-pika"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    wall = dict.fromkeys(SYSTEMS, 0.0)
    cpu = dict.fromkeys(SYSTEMS, 0.0)
    planned = event_pool(url, namespace)
    planned.consumer("bench.mixed", queue="mixed", prefetch=args.prefetch)(_never_called)
    plan = planned.topology()
    [arguments] = [queue.arguments for queue in plan.queues if queue.name == event_queue]
    try:
        channel.queue_declare(pika_queue, durable=True)
        for r in range(args.rounds):
            for k in range(len(SYSTEMS)):
                system = SYSTEMS[(r + k) % len(SYSTEMS)]
                queue = event_queue if system == "event" else pika_queue
                if system == "event":  # the pool declares it too; the first round's fill needs it now
                    channel.queue_declare(queue, durable=True, arguments=arguments or None)
                fill(channel, queue, args.jobs)
                argv = [
                    sys.executable, __file__, "--child", system, "--loop", loop, "--namespace", namespace,
                    "--queue", queue, "--jobs", str(args.jobs), "--slow-every", str(args.slow_every),
                    "--slow-s", str(args.slow_s), "--prefetch", str(args.prefetch),
                ]  # fmt: skip
                done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
                if done.returncode:
                    raise RuntimeError(f"{system} failed:\n{done.stderr[-3000:]}")
                figures = json.loads(done.stdout.splitlines()[-1])
                wall[system] += figures["seconds"]
                cpu[system] += figures["cpu_seconds"]
                left = channel.queue_declare(queue, durable=True, passive=True).method.message_count
                if left:
                    raise RuntimeError(f"{system} left {left} messages unacked in {queue}")
    finally:
        for queue in plan.queues:
            channel.queue_delete(queue.name)
        channel.queue_delete(pika_queue)
        for exchange in plan.exchanges:
            channel.exchange_delete(exchange.name)
        channel.exchange_delete(wire.control_exchange_name(f"{namespace}-ex"))
        connection.close()
    jobs = args.jobs * args.rounds
    slots = args.prefetch / (args.slow_s / args.slow_every)
    return {
        "jobs": jobs,
        "loop": loop,
        "prefetch": args.prefetch,
        "slow_every": args.slow_every,
        "slow_s": args.slow_s,
        "bound_by_concurrency_per_s": slots,
        **{f"{s}_per_s": jobs / wall[s] for s in SYSTEMS},
        **{f"{s}_cpu_us": cpu[s] / jobs * 1e6 for s in SYSTEMS},
        "ratio_pika": wall["pika"] / wall["event"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="messages per contestant per round")
    parser.add_argument("--slow-every", type=int, default=100, help="one message in N is slow (100: 1%%)")
    parser.add_argument("--slow-s", type=float, default=1.0, help="how long a slow message takes")
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS, dest="system")
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:
        child(args)
        return
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"mixed work, {result['slow_every']}th message sleeps {result['slow_s']:g} s, prefetch "
        f"{result['prefetch']}, {result['loop']}: bound by concurrency at "
        f"{result['bound_by_concurrency_per_s']:,.0f}/s"
    )
    for system in SYSTEMS:
        rate, cpu = result[f"{system}_per_s"], result[f"{system}_cpu_us"]
        print(f"  {system:6} {rate:>9,.0f} msg/s  {cpu:6.1f} µs CPU/msg")
    print(f"  event/pika: {result['ratio_pika']:.2f}")


if __name__ == "__main__":
    main()
