"""One contestant of `event bench` in a fresh interpreter: ``python -m event.bench_child ...``.

Each run measures one system (``event``, ``pika`` or ``aio-pika``) in one phase (``consume``,
``publish``, or ``hold`` for memory) and prints one JSON line: ``seconds`` and ``cpu_seconds`` (wall
clock and the process's CPU time over the timed part), ``count``, ``loop`` and ``peak_rss_mb``. The
parent (:mod:`event.bench`) fills the queues before, checks them after, and passes the broker URL in
``$AMQP_URL`` (argv would show its password to every user of ``ps``).

What is timed:

- consume: from the first message handled to the connection closed with every message acked (the
  connection set-up and the pool's declarations are left out, for every system alike);
- publish: from the first publish to the last confirm, ``window`` publishes kept in flight. Before
  it, each publisher sends one message of the run's size to :data:`WARM_UP_KEY`, bound to nothing
  (the broker confirms and drops it), and waits for its confirm: what a first publish costs once per
  process is left out, as the connection set-up is (event imports opentelemetry, when it is
  installed, at its first publish: some 45 ms, most of a burst of ten MiB messages).

The event side uses only the public API (WorkerPool, Publisher); the anchors are a bare pika
``AsyncioConnection`` and plain aio-pika, as issue 16 describes them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import orjson

from event import Message, Publisher, WorkerPool, loops

PREFETCH = 200  # the seed benchmark's, for every system
ACK_EVERY = 50  # the pika anchor acks `multiple` every 50th message of a channel
SYSTEMS = ("event", "pika", "aio-pika")
WARM_UP_KEY = "bench.warm-up"  # a routing key no queue is bound to: the warm-up publish is dropped

Figures = dict[str, Any]


def message_properties() -> dict[str, Any]:
    """The properties of every benchmark message, Hutch's (JSON, persistent, an id, a timestamp): the
    parent's fill and the anchors' publishes send the same as event's Publisher."""
    return {
        "content_type": "application/json",
        "delivery_mode": 2,
        "message_id": str(uuid.uuid4()),
        "timestamp": int(time.time()),
    }


_PADDED = b'{"n":0,"pad":""}'  # the body of payload(0, size) without its padding


@functools.cache
def _pad(body_size: int) -> str:
    return "x" * max(0, body_size - len(_PADDED))


def payload(n: int, body_size: int = 0) -> dict[str, Any]:
    """Message ``n`` of a run: the seed's ``{"n": n}``, or with ``body_size`` a ``"pad"`` string that
    makes its JSON ``body_size`` bytes long (a byte more per digit of ``n`` past the first). Every
    contestant publishes, and the parent fills the queues with, this same JSON; every consumer decodes it.
    The pad is one string per size, made once, so a publish costs its encoding and not the building."""
    if not body_size:
        return {"n": n}
    return {"n": n, "pad": _pad(body_size)}


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Span:
    """The timed part of a phase: wall-clock seconds, and this process's CPU seconds, which a machine
    busy with other work disturbs less (a client waiting on a slow broker spends no CPU)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def start(self) -> None:
        """Mark the start (once)."""
        self.seconds = -time.perf_counter()
        self.cpu_seconds = -_cpu_seconds()

    def stop(self) -> Span:
        """Mark the end; returns itself."""
        self.seconds += time.perf_counter()
        self.cpu_seconds += _cpu_seconds()
        return self


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _noop() -> None:
    return None


def _run_to_completion(coro: Coroutine[Any, Any, None]) -> None:
    # The anchor's per-message coroutine, run without a task, as eager dispatch runs a handler that
    # does not suspend.
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("the no-op coroutine suspended")


# --- consume ----------------------------------------------------------------------------------------------


class _JobContext:
    """The per-message context of the event consumer: built for every message, as an application's."""

    def __init__(self) -> None:
        self.seen_by_middleware = False


async def _mark(ctx: _JobContext, msg: Message[Any], call_next: Callable[[], Awaitable[Any]]) -> Any:
    ctx.seen_by_middleware = True
    return await call_next()


def event_pool(url: str, namespace: str, exchange: str, **options: Any) -> WorkerPool:
    """The pool of the event children (the parent builds one too, to read its topology)."""
    return WorkerPool(url, namespace=namespace, exchange=exchange, name="event bench", **options)


async def consume_event(url: str, namespace: str, exchange: str, keys: list[str], jobs: int) -> Span:
    """A WorkerPool with full dispatch: a context per message, a middleware, the pool's default
    concurrency limit, one consumer per key at prefetch 200, batched acks."""
    pool = event_pool(url, namespace, exchange)
    pool.middleware(_mark)
    count = 0
    span = Span()

    async def job(ctx: _JobContext, msg: Message[Any]) -> None:
        nonlocal count
        if not count:
            span.start()
        count += 1
        if count == jobs:
            pool.stop()

    for k, key in enumerate(keys):
        pool.consumer(key, queue=f"job{k}", context=_JobContext, prefetch=PREFETCH)(job)
    await pool.run(install_signal_handlers=False)  # returns once the acks are flushed and it closed
    if count != jobs:
        raise RuntimeError(f"the pool handled {count} of {jobs} jobs")
    return span.stop()


async def consume_pika(url: str, queues: list[str], jobs: int) -> Span:
    """pika's AsyncioConnection: a channel per queue at prefetch 200, orjson decode and a no-op
    coroutine run to completion per message, a `multiple` ack every 50th message of a channel."""
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection
    from pika.channel import Channel
    from pika.spec import Basic, BasicProperties

    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    count = 0
    span = Span()
    unacked: dict[Channel, tuple[int, int]] = {}  # channel: (messages not yet acked, last delivery tag)

    def on_message(channel: Channel, deliver: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        nonlocal count
        if not count:
            span.start()
        orjson.loads(body)
        _run_to_completion(_noop())
        count += 1
        waiting, _ = unacked.get(channel, (0, 0))
        tag = deliver.delivery_tag
        assert tag is not None
        if waiting + 1 == ACK_EVERY:
            channel.basic_ack(tag, multiple=True)
            unacked[channel] = (0, tag)
        else:
            unacked[channel] = (waiting + 1, tag)
        if count == jobs:
            for each, (rest, last) in unacked.items():
                if rest:
                    each.basic_ack(last, multiple=True)
            connection.close()

    def on_channel(channel: Channel, queue: str) -> None:
        channel.basic_qos(
            prefetch_count=PREFETCH, callback=lambda _: channel.basic_consume(queue, on_message)
        )

    def on_open(connection: AsyncioConnection) -> None:
        for queue in queues:
            connection.channel(on_open_callback=functools.partial(on_channel, queue=queue))

    def on_close(connection: AsyncioConnection, reason: BaseException) -> None:
        if closed.done():
            return
        if count == jobs:
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


async def consume_aio_pika(url: str, queues: list[str], jobs: int) -> Span:
    """Plain aio-pika: a channel per queue at prefetch 200, orjson decode, one ack per message."""
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    count = 0
    span = Span()
    done = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal count
        if not count:
            span.start()
        orjson.loads(message.body)
        await message.ack()
        count += 1
        if count == jobs:
            done.set()

    connection = await aio_pika.connect(url)
    try:
        for name in queues:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(name, durable=True, passive=True)
            await queue.consume(on_message)
        await done.wait()
    finally:
        await connection.close()
    return span.stop()


# --- publish ----------------------------------------------------------------------------------------------


async def _in_window(jobs: int, window: int, publish: Callable[[int], Awaitable[None]]) -> Span:
    # `window` publishers draw from one sequence: exactly `window` publishes in flight until the end.
    numbers: Iterator[int] = iter(range(jobs))

    async def publisher() -> None:
        for n in numbers:
            await publish(n)

    span = Span()
    span.start()
    await asyncio.gather(*(publisher() for _ in range(min(window, jobs))))
    return span.stop()


async def publish_event(
    url: str, namespace: str, exchange: str, keys: list[str], jobs: int, window: int, body_size: int = 0
) -> Span:
    """Our Publisher, ``window`` publishes in flight, each returning once the broker confirmed it."""
    async with Publisher(url, namespace=namespace, exchange=exchange) as publisher:
        await publisher.publish(WARM_UP_KEY, payload(0, body_size))
        return await _in_window(
            jobs, window, lambda n: publisher.publish(keys[n % len(keys)], payload(n, body_size))
        )


async def publish_aio_pika(
    url: str, exchange: str, keys: list[str], jobs: int, window: int, body_size: int = 0
) -> Span:
    """aio-pika with publisher confirms, ``window`` publishes in flight."""
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False)

        async def send(n: int, key: str) -> None:
            props = message_properties()
            await target.publish(
                aio_pika.Message(
                    orjson.dumps(payload(n, body_size)),
                    content_type=props["content_type"],
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=props["message_id"],
                    timestamp=props["timestamp"],
                ),
                routing_key=key,
            )

        await send(0, WARM_UP_KEY)
        return await _in_window(jobs, window, lambda n: send(n, keys[n % len(keys)]))
    finally:
        await connection.close()


async def publish_pika(
    url: str, exchange: str, route: Callable[[int], str], jobs: int, window: int, body_size: int = 0
) -> Span:
    """pika's AsyncioConnection with confirm_delivery, ``window`` publishes in flight: each confirm
    (``multiple`` ones count every tag they cover) lets the next messages go. ``route(n)`` is the
    routing key of message ``n``. A nack raises: nothing unconfirmed counts as sent."""
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection
    from pika.channel import Channel
    from pika.frame import Method
    from pika.spec import Basic

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[Span] = loop.create_future()
    closed: asyncio.Future[None] = loop.create_future()
    sent = 0
    confirmed = 0
    floor = 0  # every message up to here is confirmed
    acked = bytearray(jobs + 1)  # by message (its delivery tag less the warm-up's), for single acks
    warm = False  # the warm-up publish (delivery tag 1) is confirmed
    span = Span()
    channel: Channel | None = None

    def send_more() -> None:
        nonlocal sent
        assert channel is not None
        while sent < jobs and sent - confirmed < window:
            props = message_properties()
            channel.basic_publish(
                exchange,
                route(sent),
                orjson.dumps(payload(sent, body_size)),
                pika.BasicProperties(**props),
            )
            sent += 1

    def on_confirm(frame: Method[Any]) -> None:
        nonlocal confirmed, floor, warm
        method = frame.method
        if not isinstance(method, Basic.Ack):
            if not finished.done():
                finished.set_exception(RuntimeError(f"the broker answered {method} to a publish"))
            return
        assert method.delivery_tag is not None
        if not warm:  # the warm-up's confirm (nothing else is out yet): the measured publishes start
            warm = True
            span.start()
            send_more()
            return
        tag = method.delivery_tag - 1
        first = floor + 1 if method.multiple else tag
        for each in range(first, tag + 1):
            if not acked[each]:
                acked[each] = 1
                confirmed += 1
        while floor < jobs and acked[floor + 1]:
            floor += 1
        if confirmed == jobs:
            if not finished.done():
                finished.set_result(span.stop())
        else:
            send_more()

    def on_selected(_: Method[Any]) -> None:
        assert channel is not None
        channel.basic_publish(
            exchange,
            WARM_UP_KEY,
            orjson.dumps(payload(0, body_size)),
            pika.BasicProperties(**message_properties()),
        )

    def on_channel(opened: Channel) -> None:
        nonlocal channel
        channel = opened
        opened.confirm_delivery(on_confirm, callback=on_selected)

    def on_open(connection: AsyncioConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_close(connection: AsyncioConnection, reason: BaseException) -> None:
        if not finished.done():
            finished.set_exception(reason)
        if not closed.done():
            closed.set_result(None)

    def on_open_error(connection: AsyncioConnection, error: BaseException) -> None:
        finished.set_exception(error)
        closed.set_result(None)

    connection = AsyncioConnection(
        pika.URLParameters(url), on_open, on_open_error, on_close, custom_ioloop=loop
    )
    try:
        return await finished
    finally:
        if not connection.is_closed and not connection.is_closing:
            connection.close()
        await closed


# --- memory -----------------------------------------------------------------------------------------------


async def hold_event(url: str, namespace: str, exchange: str, keys: list[str], held: int) -> float:
    """RSS of a worker holding ``held`` messages prefetched, each inside a waiting handler."""
    pool = event_pool(url, namespace, exchange, concurrency=0)
    release = asyncio.Event()
    all_waiting = asyncio.Event()
    waiting = 0

    async def hold(ctx: object, msg: Message[Any]) -> None:
        nonlocal waiting
        waiting += 1
        if waiting == held:
            all_waiting.set()
        await release.wait()

    for k, key in enumerate(keys):
        pool.consumer(key, queue=f"hold{k}", prefetch=held, retries=0)(hold)
    async with pool.running():
        await all_waiting.wait()
        rss = rss_mb()
        release.set()
    return rss


# --- latency ----------------------------------------------------------------------------------------------
#
# Every latency contestant consumes its own queue, bound with the same key to the same exchange, so that
# one paced stream reaches all of them at once; each body carries its publish time (µs since the epoch,
# exact in a JSON number and in Go's float64), and each contestant reads the clock in its handler.


def percentiles(latencies_us: list[float]) -> Figures:
    """p50, p99 and p99.9 of ``latencies_us``, in milliseconds (nearest rank)."""
    ordered = sorted(latencies_us) or [float("nan")]
    last = len(ordered) - 1

    def rank(q: float) -> float:
        return ordered[min(last, int(q * len(ordered)))] / 1000

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "p999_ms": rank(0.999), "count": len(ordered)}


def _now_us() -> int:
    return time.time_ns() // 1000


LATENCY_IDLE_S = 10.0  # a contestant that got nothing for this long has fallen behind for good: stop it


async def _watch(done: Awaitable[Any], count: Callable[[], int], stop: Callable[[], None]) -> None:
    """Wait for ``done``; if ``count()`` stands still for :data:`LATENCY_IDLE_S`, ``stop()`` the
    contestant, which then reports what it got (the parent says how many of the stream arrived)."""
    waiting = asyncio.ensure_future(done)
    seen, since = -1, time.monotonic()
    while not waiting.done():
        await asyncio.wait({waiting}, timeout=1.0)
        if count() != seen:
            seen, since = count(), time.monotonic()
        elif time.monotonic() - since > LATENCY_IDLE_S:
            stop()
            await waiting
    waiting.result()


async def latency_event(url: str, namespace: str, exchange: str, key: str, jobs: int) -> Figures:
    """A WorkerPool with full dispatch (context, middleware, batched acks) at prefetch 200."""
    pool = event_pool(url, namespace, exchange)
    pool.middleware(_mark)
    latencies: list[float] = []

    async def job(ctx: _JobContext, msg: Message[Any]) -> None:
        latencies.append(_now_us() - msg.body["t"])
        if len(latencies) == jobs:
            pool.stop()

    pool.consumer(key, queue="latency", context=_JobContext, prefetch=PREFETCH)(job)
    run = asyncio.create_task(pool.run(install_signal_handlers=False))
    await asyncio.sleep(0)  # run() makes its events
    await pool.wait_until_ready(60)
    print("ready", flush=True)
    await _watch(run, latencies.__len__, pool.stop)  # until the handler stopped it, the acks flushed
    return percentiles(latencies)


async def latency_pika(url: str, queue: str, jobs: int) -> Figures:
    """pika's AsyncioConnection at prefetch 200, a `multiple` ack every 50th message."""
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection
    from pika.channel import Channel
    from pika.spec import Basic, BasicProperties

    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    latencies: list[float] = []

    def on_message(channel: Channel, deliver: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        latencies.append(_now_us() - orjson.loads(body)["t"])
        _run_to_completion(_noop())
        tag = deliver.delivery_tag
        assert tag is not None
        if len(latencies) % ACK_EVERY == 0 or len(latencies) == jobs:
            channel.basic_ack(tag, multiple=True)
        if len(latencies) == jobs:
            connection.close()

    def on_consuming(frame: Any) -> None:
        print("ready", flush=True)

    def on_channel(channel: Channel) -> None:
        channel.basic_qos(
            prefetch_count=PREFETCH,
            callback=lambda _: channel.basic_consume(queue, on_message, callback=on_consuming),
        )

    def on_close(connection: AsyncioConnection, reason: BaseException) -> None:
        if not closed.done():
            closed.set_result(None)  # a contestant stopped by the watch reports what it got

    connection = AsyncioConnection(
        pika.URLParameters(url),
        lambda c: c.channel(on_open_callback=on_channel),
        lambda c, error: closed.set_exception(error),
        on_close,
        custom_ioloop=loop,
    )
    await _watch(closed, latencies.__len__, connection.close)
    return percentiles(latencies)


async def pace(url: str, exchange: str, key: str, jobs: int, rate: int) -> Figures:
    """Publish ``jobs`` messages at ``rate`` a second, evenly (a tick every millisecond), without
    confirms: the stream's pace is the experiment's, not the broker's answer."""
    from event.amqp import open_connection
    from event.driver import Properties

    paced = Properties(content_type="application/json", delivery_mode=1)
    connection = await open_connection(url, name="event bench pacer")
    try:
        channel = await connection.channel()
        started = time.perf_counter()
        sent = 0
        while sent < jobs:
            due = min(jobs, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                body = orjson.dumps({"n": sent, "t": _now_us()})
                await channel.basic_publish(body, exchange=exchange, routing_key=key, properties=paced)
                sent += 1
            await asyncio.sleep(0.001)
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    return {"count": jobs, "seconds": seconds, "rate": jobs / seconds}


# --- the command ------------------------------------------------------------------------------------------


def child_argv(phase: str, system: str, loop: str, **options: Any) -> list[str]:
    """The command line of one child (the parent's side of :func:`main`'s parser)."""
    argv = [sys.executable, "-m", "event.bench_child", phase, system, "--loop", loop]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", ",".join(value) if isinstance(value, list) else str(value)]
    return argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m event.bench_child")
    parser.add_argument("phase", choices=("consume", "publish", "hold", "latency", "pace"))
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--namespace", default="")
    parser.add_argument("--exchange", default="")
    parser.add_argument("--keys", default="", help="routing keys, comma-separated")
    parser.add_argument("--queues", default="", help="queues, comma-separated (the anchors' consume)")
    parser.add_argument("--rate", type=int, default=0, help="pace: messages a second")
    parser.add_argument("--body-size", type=int, default=0, help="publish: bytes of JSON a body (0: {n})")
    return parser


async def _measure(args: argparse.Namespace, url: str) -> Figures:
    keys = [key for key in args.keys.split(",") if key]
    queues = [queue for queue in args.queues.split(",") if queue]
    phases: dict[tuple[str, str], Callable[[], Awaitable[Span]]] = {
        ("consume", "event"): lambda: consume_event(url, args.namespace, args.exchange, keys, args.jobs),
        ("consume", "pika"): lambda: consume_pika(url, queues, args.jobs),
        ("consume", "aio-pika"): lambda: consume_aio_pika(url, queues, args.jobs),
        ("publish", "event"): lambda: publish_event(
            url, args.namespace, args.exchange, keys, args.jobs, args.window, args.body_size
        ),
        ("publish", "pika"): lambda: publish_pika(
            url, args.exchange, lambda n: keys[n % len(keys)], args.jobs, args.window, args.body_size
        ),
        ("publish", "aio-pika"): lambda: publish_aio_pika(
            url, args.exchange, keys, args.jobs, args.window, args.body_size
        ),
    }
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    if args.phase == "latency":
        if args.system == "event":
            figures = await latency_event(url, args.namespace, args.exchange, keys[0], args.jobs)
        else:
            figures = await latency_pika(url, queues[0], args.jobs)
        return {**figures, "loop": loop}
    if args.phase == "pace":
        return {**await pace(url, args.exchange, keys[0], args.jobs, args.rate), "loop": loop}
    if args.phase == "hold":
        if args.system != "event":
            raise SystemExit("the hold phase measures event only")
        rss = await hold_event(url, args.namespace, args.exchange, keys, args.jobs)
        return {"rss_mb": rss, "count": args.jobs, "loop": loop, "peak_rss_mb": peak_rss_mb()}
    span = await phases[args.phase, args.system]()
    return {
        "seconds": span.seconds,
        "cpu_seconds": span.cpu_seconds,
        "count": args.jobs,
        "loop": loop,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> None:
    """Run one phase of one system and print its figures as one JSON line on stdout."""
    args = _parser().parse_args(argv)
    url = os.environ["AMQP_URL"]
    figures = loops.run(_measure(args, url), args.loop)
    print(orjson.dumps(figures).decode(), flush=True)


if __name__ == "__main__":
    main()
