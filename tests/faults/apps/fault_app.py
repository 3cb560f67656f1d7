"""The worker of the fault suite: journals every handling (id, redelivered flag, pid) to a file."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from event import Message, WorkerPool

pool = WorkerPool(os.environ["AMQP_URL"], namespace=os.environ["EVENT_TEST_NAMESPACE"],
                  exchange=os.environ["EVENT_TEST_EXCHANGE"], concurrency=50, grace=10)  # fmt: skip
journal = open(os.environ["EVENT_TEST_JOURNAL"], "a", buffering=1)  # noqa: SIM115 - lives as long as the worker


@pool.consumer("fault.job", prefetch=200, retries=0)
async def job(ctx: object, msg: Message[Any]) -> None:
    await asyncio.sleep(0.002)
    journal.write(f"{msg.body['id']} {int(msg.redelivered)} {os.getpid()}\n")
