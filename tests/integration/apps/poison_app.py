"""A worker whose handler kills its own process on a poison message; journals every handling."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from event import Message, WorkerPool

pool = WorkerPool(os.environ["AMQP_URL"], namespace=os.environ["EVENT_TEST_NAMESPACE"],
                  exchange=os.environ["EVENT_TEST_EXCHANGE"], concurrency=20,
                  queue_type=os.environ.get("EVENT_TEST_QUEUE_TYPE") or None)  # fmt: skip
journal = open(os.environ["EVENT_TEST_JOURNAL"], "a", buffering=1)  # noqa: SIM115 - lives as long as the worker


MAX_DELIVERIES = int(os.environ["EVENT_TEST_MAX_DELIVERIES"])
PREFETCH = int(os.environ.get("EVENT_TEST_PREFETCH", "1"))


# prefetch 1, as docs/reliability.md advises for handlers that may kill the process: a crash then
# charges only the message that caused it, not the others the worker held at that moment.
@pool.consumer("poison.job", prefetch=PREFETCH, retries=0, max_deliveries=MAX_DELIVERIES)
async def job(ctx: object, msg: Message[Any]) -> None:
    if msg.body.get("poison"):
        journal.write(f"poison {int(msg.redelivered)} {os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)  # what an out-of-memory kill or a segfault looks like
    await asyncio.sleep(0.002)
    journal.write(f"{msg.body['id']} {int(msg.redelivered)} {os.getpid()}\n")
