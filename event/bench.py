"""The throughput benchmark (`event bench`): the Go library's job benchmark, against baselines run
in the same process and on the same broker, so the figures are ratios a noisy machine can't skew.

Jobs are near no-ops spread over routing keys, each incrementing a counter. Measured, each on its own
freshly published messages:

- ``jobs_per_s``: a WorkerPool, from the start of ``run()`` to the last ack (the pool stopped); with
  ``processes`` above 1, that many worker processes on the same queues, from the start of the first
  one's ``run()`` to the return of the last one's, acks flushed (interpreter start-up and exit
  excluded, as in one process);
- ``baseline_jobs_per_s``: plain aio-pika, one queue per key, per-message ack, prefetch 200;
- ``ceiling_jobs_per_s``: bare aiormq, prefetch 1000, orjson decode, an awaited no-op, a
  ``multiple=True`` ack every 100th message;
- ``publish_per_s``: our Publisher with confirms kept in flight, against ``baseline_publish_per_s``,
  aio-pika publishing one message and awaiting its confirm each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aio_pika
import aiormq
import orjson

from event.message import Message
from event.pool import WorkerPool
from event.publisher import Publisher, properties

Progress = Callable[[str, int, int], None]

HOLD = 10_000  # messages a worker holds prefetched and in flight while its memory is read
ROUNDS = 3


@dataclass
class BenchResult:
    """The figures of one benchmark run (see the module docstring for what each measures)."""

    jobs: int
    routing_keys: int
    processes: int
    jobs_per_s: float
    baseline_jobs_per_s: float
    ratio: float
    ceiling_jobs_per_s: float
    ceiling_ratio: float
    publish_per_s: float
    baseline_publish_per_s: float
    publish_ratio: float
    peak_rss_mb: float
    hold_rss_mb: float
    loop: str

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


async def run_bench(
    url: str,
    *,
    jobs: int = 100_000,
    routing_keys: int = 5,
    processes: int = 1,
    progress: Progress = _no_progress,
) -> BenchResult:
    """Run every phase once against the broker at ``url`` and return the figures; ``processes`` is
    how many worker processes consume in our phase (the baselines are one process each)."""
    if processes < 1:
        raise ValueError(f"processes must be 1 or more, not {processes}")
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    exchange = f"{namespace}-ex"
    keys = [f"bench.job{k}" for k in range(routing_keys)]
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    queues: list[str] = []

    async def fresh(prefix: str, phase: str, count: int = jobs) -> list[str]:
        names = [f"{prefix}{k}" for k in range(routing_keys)]
        queues.extend(name for name in names if name not in queues)
        for name in names:
            await channel.queue_declare(name, durable=True)
        await _fill(channel, names, count, progress, phase)
        return names

    async def ours(n: int) -> float:
        await fresh(f"{namespace}:job", "fill for event", n)
        if processes == 1:
            return await _pool_phase(url, namespace, exchange, keys, n, progress)
        return await _pool_in_children(url, namespace, exchange, keys, n, processes, progress)

    async def baseline(n: int) -> float:
        return await _aio_pika_phase(
            url, await fresh(f"{namespace}-base", "fill for aio-pika", n), n, progress
        )

    async def ceiling(n: int) -> float:
        return await _aiormq_phase(url, await fresh(f"{namespace}-ceil", "fill for aiormq", n), n, progress)

    contestants = [ours, baseline, ceiling]
    seconds = [0.0, 0.0, 0.0]
    try:
        publish_rate = await _publish_phase(url, namespace, exchange, keys, jobs, queues, progress)
        baseline_publish = await _baseline_publish_phase(url, namespace, jobs, queues, progress)
        # The machine is shared: run the three consumers in turns, in a rotating order, so that a
        # slow spell of the machine falls on all of them rather than on one.
        shares = [jobs // ROUNDS + (1 if r < jobs % ROUNDS else 0) for r in range(ROUNDS)]
        for r, share in enumerate(shares):
            if not share:
                continue
            for k in range(3):
                which = (r + k) % 3
                seconds[which] += share / await contestants[which](share)
        held = min(jobs, HOLD)
        await fresh(f"{namespace}:hold", "fill for memory", held)
        hold_rss = await _hold_in_child(url, namespace, exchange, held, routing_keys, progress)
    finally:
        for name in queues:
            await channel.queue_delete(name)
        plan = WorkerPool(namespace=namespace, exchange=exchange).topology()
        for queue in plan.queues:
            await channel.queue_delete(queue.name)
        for declared in plan.exchanges:
            await channel.exchange_delete(declared.name)
        await connection.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(
        jobs=jobs,
        routing_keys=routing_keys,
        processes=processes,
        jobs_per_s=jobs / seconds[0],
        baseline_jobs_per_s=jobs / seconds[1],
        ratio=seconds[1] / seconds[0],
        ceiling_jobs_per_s=jobs / seconds[2],
        ceiling_ratio=seconds[2] / seconds[0],
        publish_per_s=publish_rate,
        baseline_publish_per_s=baseline_publish,
        publish_ratio=publish_rate / baseline_publish,
        peak_rss_mb=peak,
        hold_rss_mb=hold_rss,
        loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
    )


async def _fill(
    channel: aiormq.abc.AbstractChannel, queues: list[str], jobs: int, progress: Progress, phase: str
) -> None:
    """Put ``jobs`` messages round-robin into ``queues`` (default exchange, confirms, in windows)."""
    window = 2000
    for start in range(0, jobs, window):
        await asyncio.gather(
            *(
                channel.basic_publish(
                    orjson.dumps({"n": n}), routing_key=queues[n % len(queues)], properties=properties()
                )
                for n in range(start, min(start + window, jobs))
            )
        )
        progress(phase, min(start + window, jobs), jobs)


async def _publish_phase(
    url: str, namespace: str, exchange: str, keys: list[str], jobs: int, queues: list[str], progress: Progress
) -> float:
    """Our Publisher, confirms kept in flight: ``publish`` calls gathered in windows."""
    sink = f"{namespace}-sink"
    queues.append(sink)
    async with Publisher(url, namespace=namespace, exchange=exchange) as publisher:
        assert publisher._channel is not None
        await publisher._channel.queue_declare(sink, durable=True)
        await publisher._channel.queue_bind(sink, exchange, routing_key="#")
        window = 2000
        started = time.perf_counter()
        for start in range(0, jobs, window):
            await asyncio.gather(
                *(
                    publisher.publish(keys[n % len(keys)], {"n": n})
                    for n in range(start, min(start + window, jobs))
                )
            )
            progress("publish (event)", min(start + window, jobs), jobs)
        return jobs / (time.perf_counter() - started)


async def _baseline_publish_phase(
    url: str, namespace: str, jobs: int, queues: list[str], progress: Progress
) -> float:
    """aio-pika, one message at a time, each confirm awaited (a tenth of the jobs: it is slow)."""
    count = max(1, jobs // 10)
    sink = f"{namespace}-base-sink"
    queues.append(sink)
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(sink, durable=True)
        started = time.perf_counter()
        for n in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(orjson.dumps({"n": n}), content_type="application/json", delivery_mode=2),
                routing_key=sink,
            )
            if n % 1000 == 0:
                progress("publish (aio-pika)", n, count)
        return count / (time.perf_counter() - started)
    finally:
        await connection.close()


async def _pool_phase(
    url: str, namespace: str, exchange: str, keys: list[str], jobs: int, progress: Progress
) -> float:
    counter = 0
    done = asyncio.Event()

    def on_job() -> None:
        nonlocal counter
        counter += 1
        if counter >= jobs:
            done.set()

    pool = _job_pool(url, namespace, exchange, keys, on_job)
    started = time.perf_counter()
    runner = asyncio.create_task(pool.run(install_signal_handlers=False))
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), timeout=0.5)
        except TimeoutError:
            if runner.done():
                runner.result()
        progress("consume (event)", counter, jobs)
    pool.stop()
    await runner  # the last acks are flushed when run() returns
    return jobs / (time.perf_counter() - started)


async def _aio_pika_phase(url: str, queues: list[str], jobs: int, progress: Progress) -> float:
    counter = 0
    done = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal counter
        orjson.loads(message.body)
        await message.ack()
        counter += 1
        if counter >= jobs:
            done.set()

    started = time.perf_counter()
    connection = await aio_pika.connect(url)
    try:
        for name in queues:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=200)
            queue = await channel.declare_queue(name, durable=True, passive=True)
            await queue.consume(on_message)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.5)
            progress("consume (aio-pika)", counter, jobs)
    finally:
        await connection.close()
    return jobs / (time.perf_counter() - started)


async def _aiormq_phase(url: str, queues: list[str], jobs: int, progress: Progress) -> float:
    counter = 0
    done = asyncio.Event()

    async def noop() -> None:
        pass

    started = time.perf_counter()
    connection = await aiormq.connect(url)
    try:
        for name in queues:
            channel = await connection.channel()
            await channel.basic_qos(prefetch_count=1000)
            seen = 0

            async def on_message(
                message: aiormq.abc.DeliveredMessage, channel: aiormq.abc.AbstractChannel = channel
            ) -> None:
                nonlocal counter, seen
                orjson.loads(message.body)
                await noop()
                seen += 1
                counter += 1
                if seen % 100 == 0 or counter >= jobs:
                    await channel.basic_ack(message.delivery.delivery_tag, multiple=True)  # type: ignore[union-attr,arg-type]
                if counter >= jobs:
                    done.set()

            await channel.basic_consume(name, on_message)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.5)
            progress("consume (aiormq)", counter, jobs)
    finally:
        await connection.close()
    return jobs / (time.perf_counter() - started)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _hold_phase(
    url: str, namespace: str, exchange: str, held: int, routing_keys: int, progress: Progress
) -> float:
    """RSS of a worker holding ``held`` messages prefetched, each with its handler waiting."""
    pool = WorkerPool(url, namespace=namespace, exchange=exchange, concurrency=0)
    release = asyncio.Event()
    waiting = 0

    async def hold(ctx: object, msg: Message[Any]) -> None:
        nonlocal waiting
        waiting += 1
        await release.wait()

    for k in range(routing_keys):
        pool.consumer(f"bench.hold{k}", queue=f"hold{k}", prefetch=held, retries=0)(hold)
    async with pool.running():
        while waiting < held:
            await asyncio.sleep(0.05)
            progress("hold in memory", waiting, held)
        rss = _rss_mb()
        release.set()
    return rss


async def _hold_in_child(
    url: str, namespace: str, exchange: str, held: int, routing_keys: int, progress: Progress
) -> float:
    """The hold phase in a fresh interpreter, so that the other phases' garbage does not count."""
    progress("hold in memory", 0, held)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.bench", "hold", namespace, exchange, str(held), str(routing_keys),
        stdout=asyncio.subprocess.PIPE, env=_child_env(url),
    )  # fmt: skip
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the memory phase failed with exit code {child.returncode}")
    progress("hold in memory", held, held)
    return float(out.decode().strip().splitlines()[-1])


def _job_pool(
    url: str, namespace: str, exchange: str, keys: list[str], on_job: Callable[[], None]
) -> WorkerPool:
    """The pool of the consume phases: one consumer per key, each job a counted no-op."""
    pool = WorkerPool(url, namespace=namespace, exchange=exchange, concurrency=0)

    async def job(ctx: object, msg: Message[Any]) -> None:
        on_job()

    for k, key in enumerate(keys):
        pool.consumer(key, queue=f"job{k}", prefetch=1000, retries=0)(job)
    return pool


async def _pool_in_children(
    url: str, namespace: str, exchange: str, keys: list[str], jobs: int, processes: int, progress: Progress
) -> float:
    """``processes`` workers (``python -m event.bench consume``) on the job queues; each prints when
    its pool starts, its count as it goes, and, after SIGTERM, when its pool has drained and flushed
    its acks."""
    argv = [sys.executable, "-m", "event.bench", "consume", namespace, exchange, ",".join(keys)]
    children = [
        await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, env=_child_env(url))
        for _ in range(processes)
    ]
    counts = [0] * processes
    starts: list[float] = []  # wall-clock times, comparable across processes of one machine
    ends: list[float] = []

    async def follow(i: int, child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for line in child.stdout:
            word, _, value = line.decode().partition(" ")
            if word == "start":
                starts.append(float(value))
            elif word == "done":
                ends.append(float(value))
            else:
                counts[i] = int(word)

    followers = [asyncio.create_task(follow(i, child)) for i, child in enumerate(children)]
    try:
        while sum(counts) < jobs:
            if any(child.returncode is not None for child in children):
                raise RuntimeError("a worker of the consume phase exited before the jobs were done")
            await asyncio.sleep(0.05)
            progress(f"consume (event x{processes})", sum(counts), jobs)
    finally:
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        codes = [await child.wait() for child in children]
        await asyncio.gather(*followers)
    if any(codes) or len(ends) != processes:
        raise RuntimeError(f"the consume phase's workers exited with {codes}")
    return jobs / (max(ends) - min(starts))


async def _consume_in_child(url: str, namespace: str, exchange: str, keys: list[str]) -> None:
    count = 0

    def on_job() -> None:
        nonlocal count
        count += 1

    pool = _job_pool(url, namespace, exchange, keys, on_job)

    async def report() -> None:
        reported = -1
        while True:
            if count != reported:
                reported = count
                print(count, flush=True)
            await asyncio.sleep(0.05)

    reporter = asyncio.create_task(report())
    print("start", time.time(), flush=True)
    await pool.run()  # until SIGTERM; returns once the acks are flushed
    reporter.cancel()
    print(count, flush=True)
    print("done", time.time(), flush=True)


def _child_env(url: str) -> dict[str, str]:
    # The URL goes by environment, not argv, where `ps` would show its password to every user.
    return {**os.environ, "AMQP_URL": url}


if __name__ == "__main__":  # the children of the memory and multi-process phases, URL in $AMQP_URL
    _url = os.environ["AMQP_URL"]
    if sys.argv[1] == "hold":  # python -m event.bench hold NS EXCHANGE N KEYS
        _namespace, _exchange, _held, _keys = sys.argv[2:]
        print(asyncio.run(_hold_phase(_url, _namespace, _exchange, int(_held), int(_keys), _no_progress)))
    else:  # python -m event.bench consume NS EXCHANGE KEY,KEY,...
        _namespace, _exchange, _key_list = sys.argv[2:]
        asyncio.run(_consume_in_child(_url, _namespace, _exchange, _key_list.split(",")))
