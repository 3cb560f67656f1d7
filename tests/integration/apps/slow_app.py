"""A worker for the shutdown tests, configured by environment variables and run by `event worker`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from event import Message, WorkerPool

pool = WorkerPool(
    os.environ["AMQP_URL"],
    namespace=os.environ["EVENT_TEST_NAMESPACE"],
    exchange=os.environ["EVENT_TEST_EXCHANGE"],
    concurrency=int(os.environ["EVENT_TEST_CONCURRENCY"]),
    grace=float(os.environ["EVENT_TEST_GRACE"]),
)
journal = open(os.environ["EVENT_TEST_JOURNAL"], "a", buffering=1)  # noqa: SIM115 - lives as long as the worker
pause = float(os.environ["EVENT_TEST_SLEEP"])


@pool.consumer("app.slow", prefetch=200)
async def slow(ctx: object, msg: Message[Any]) -> None:
    journal.write(f"start {msg.body['id']} {os.getpid()}\n")
    await asyncio.sleep(pause)
    journal.write(f"done {msg.body['id']} {os.getpid()}\n")
