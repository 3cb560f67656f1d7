"""A pool whose handler fails on request, for the log-format tests."""

from __future__ import annotations

import os
from typing import Any

from event import Message, WorkerPool

pool = WorkerPool(os.environ["AMQP_URL"], namespace=os.environ["EVENT_TEST_NAMESPACE"],
                  exchange=os.environ["EVENT_TEST_EXCHANGE"])  # fmt: skip


@pool.consumer("app.work", retries=0)
async def work(ctx: object, msg: Message[Any]) -> None:
    if msg.body.get("fail"):
        raise ValueError(f"cannot do {msg.body['fail']}")
