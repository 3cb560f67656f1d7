"""A worker for the gateway tests, configured by environment variables and run by `event worker`.

Two consumers, so a test can pause one and watch the other keep flowing; each handled message is one
journal line ``<queue word> <id>``.
"""

from __future__ import annotations

import os
from typing import Any

from event import Message, WorkerPool

pool = WorkerPool(
    os.environ["AMQP_URL"],
    namespace=os.environ["EVENT_TEST_NAMESPACE"],
    exchange=os.environ["EVENT_TEST_EXCHANGE"],
    concurrency=50,
)
journal = open(os.environ["EVENT_TEST_JOURNAL"], "a", buffering=1)  # noqa: SIM115 - lives as long as the worker


@pool.consumer("gw.work", prefetch=20)
async def work(ctx: object, msg: Message[Any]) -> None:
    journal.write(f"work {msg.body['id']}\n")


@pool.consumer("gw.other", prefetch=20)
async def other(ctx: object, msg: Message[Any]) -> None:
    journal.write(f"other {msg.body['id']}\n")
