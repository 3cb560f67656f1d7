"""A pool for the `event topology` tests, placed by environment variables."""

from __future__ import annotations

import os

from event import WorkerPool

pool = WorkerPool(os.environ["AMQP_URL"], namespace=os.environ["EVENT_TEST_NAMESPACE"],
                  exchange=os.environ["EVENT_TEST_EXCHANGE"])  # fmt: skip


@pool.consumer("app.send_email", "app.user.*", arguments={"x-queue-type": "classic"})
async def send_email(ctx: object, msg: object) -> None: ...


not_a_pool = 42
