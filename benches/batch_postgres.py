"""A batch consumer writing rows into PostgreSQL against the same handler one message at a time.

    python benches/batch_postgres.py [--jobs 100000] [--batch 500] [--dsn postgresql://root@127.0.0.1/test]

Needs asyncpg (``pip install asyncpg``) and a PostgreSQL (the machine's own by default). Both consumers
insert each message's row ``(n, payload)`` into a table of their own through an asyncpg pool of 10
connections:

- ``single``: ``@pool.consumer(..., prefetch=200, max_concurrency=10)``, one ``INSERT`` per message;
- ``batch``: ``@pool.consumer(..., batch=500, batch_wait=0.2)``, one ``COPY`` per batch; when a batch
  has a bad row (one message in the run carries ``n = -1``, which the table's CHECK refuses), the
  handler inserts the batch's rows one by one and raises ``BatchFailed`` naming the bad ones, so the
  good rows are written and the bad one goes to the dead queue, alone.

Each consumer runs on messages published for it just before (the queue filled first, then the pool
started), timed from its first message to its last row written. Prints rows/s of each and the ratio;
then checks that every good row is in its table exactly once and the bad one in the dead queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

from event import BatchFailed, Message, Publisher, WorkerPool, topology, wire

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
BAD = -1


async def fill(url: str, namespace: str, key: str, jobs: int) -> None:
    async with Publisher(url, namespace=namespace, exchange=f"{namespace}-ex") as publisher:
        numbers = iter(range(jobs))

        async def publish() -> None:
            for n in numbers:
                await publisher.publish(key, {"n": BAD if n == jobs // 2 else n, "payload": f"row {n}"})

        await asyncio.gather(*(publish() for _ in range(500)))


async def run_one(url: str, dsn: str, kind: str, jobs: int, batch: int) -> tuple[float, int, int]:
    import asyncpg

    namespace = f"pgbench{uuid.uuid4().hex[:8]}"
    table = f"bench_{kind}_{namespace}"
    db = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
    await db.execute(f"CREATE TABLE {table} (n integer PRIMARY KEY CHECK (n >= 0), payload text)")
    pool = WorkerPool(url, namespace=namespace, exchange=f"{namespace}-ex", name="pg bench", concurrency=0)
    written = 0
    started = 0.0
    done = asyncio.Event()
    expected = jobs - 1

    def progress(rows: int) -> None:
        nonlocal written, started
        if not started:
            started = time.perf_counter()
        written += rows
        if written >= expected:
            done.set()

    if kind == "single":

        @pool.consumer("bench.rows", queue="rows", prefetch=200, max_concurrency=10, retries=0)
        async def single(ctx: object, msg: Message[Any]) -> None:
            progress(0)
            await db.execute(f"INSERT INTO {table} VALUES ($1, $2)", msg.body["n"], msg.body["payload"])
            progress(1)

    else:

        @pool.consumer("bench.rows", queue="rows", batch=batch, batch_wait=0.2, retries=0)
        async def batched(ctx: object, msgs: list[Message[Any]]) -> None:
            progress(0)
            rows = [(m.body["n"], m.body["payload"]) for m in msgs]
            try:
                await db.copy_records_to_table(table, records=rows)
            except asyncpg.CheckViolationError:  # one bad row: the good ones one by one, the bad named
                bad = []
                async with db.acquire() as conn:
                    for m, row in zip(msgs, rows, strict=True):
                        try:
                            await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", *row)
                        except asyncpg.CheckViolationError as exc:
                            bad.append((m, exc))
                progress(len(rows) - len(bad))
                raise BatchFailed([m for m, _ in bad], error=bad[0][1]) from None
            progress(len(rows))

    try:
        plan = pool.topology()
        await fill_declared(url, pool, namespace, jobs)
        async with pool.running():
            await asyncio.wait_for(done.wait(), timeout=600)
            seconds = time.perf_counter() - started
        count = await db.fetchval(f"SELECT count(*) FROM {table}")
        dead = await dead_count(url, namespace)
    finally:
        await db.execute(f"DROP TABLE IF EXISTS {table}")
        await db.close()
        await clean(url, plan, namespace)
    return seconds, int(count), dead


async def fill_declared(url: str, pool: WorkerPool, namespace: str, jobs: int) -> None:
    # The pool declares its queue and binding; start it once with no messages, then fill, so the
    # timed run starts with a full queue.
    async with pool.running():
        pass
    await fill(url, namespace, "bench.rows", jobs)


async def dead_count(url: str, namespace: str) -> int:
    from event.amqp import open_connection

    connection = await open_connection(url, name="pg bench check")
    try:
        channel = await connection.channel()
        ok = await channel.queue_declare(wire.dead_queue_name(namespace, f"{namespace}-ex"), passive=True)
        return int(ok.message_count)
    finally:
        await connection.close()


async def clean(url: str, plan: Any, namespace: str) -> None:
    from event.amqp import open_connection

    connection = await open_connection(url, name="pg bench clean-up")
    try:
        channel = await connection.channel()
        await topology.remove(channel, plan)
        await channel.exchange_delete(wire.control_exchange_name(f"{namespace}-ex"))
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", "postgresql://root@127.0.0.1/test"))
    args = parser.parse_args()
    url = os.environ.get("AMQP_URL") or DEFAULT_URL
    results = {}
    for kind in ("single", "batch"):
        seconds, rows, dead = await run_one(url, args.dsn, kind, args.jobs, args.batch)
        results[kind] = args.jobs / seconds
        ok = rows == args.jobs - 1 and dead == 1
        print(f"  {kind:6} {args.jobs / seconds:9,.0f} rows/s  {rows} rows written, {dead} dead"
              f"{'' if ok else '  MISMATCH'}")  # fmt: skip
    print(f"  batch/single: {results['batch'] / results['single']:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
