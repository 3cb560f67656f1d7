"""A pool with cron schedules, for `event cron list`."""

from __future__ import annotations

import os

from event import WorkerPool

pool = WorkerPool(os.environ["AMQP_URL"], namespace=os.environ["EVENT_TEST_NAMESPACE"],
                  exchange=os.environ["EVENT_TEST_EXCHANGE"])  # fmt: skip
pool.schedule("*/5 * * * *", "app.report", name="report")
pool.schedule("0 9 * * 1-5", "app.standup", tz="Europe/Berlin", name="standup")
