"""A worker and a publisher in one script, against the local broker (or $AMQP_URL).

    pip install -e . && python examples/demo.py

It declares the queues `demo:send_email` and `demo:audit` on the exchange `hutch`, publishes a few
events, prints what the consumers saw (one message fails on purpose and lands in the dead queue
`demo:hutch_dead_queue`), then stops the pool the way SIGTERM would.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from event import Context, Dead, Message, Publisher, WorkerPool

NAMESPACE = os.environ.get("EVENT_DEMO_NAMESPACE", "demo")
EXCHANGE = os.environ.get("EVENT_DEMO_EXCHANGE", "hutch")

pool = WorkerPool(namespace=NAMESPACE, exchange=EXCHANGE, concurrency=20)
handled = asyncio.Queue[str]()


class MailContext(Context):
    """What the middleware finds out about a message before the handler runs."""

    user: str | None = None


@pool.middleware
async def find_user(ctx: Any, msg: Message[Any], call_next: Any) -> Any:
    if isinstance(ctx, MailContext) and isinstance(msg.body, dict):
        ctx.user = msg.body.get("user")
    return await call_next()


@pool.consumer("app.send_email", context=MailContext, max_concurrency=5, prefetch=30)
async def send_email(ctx: MailContext, msg: Message[Any]) -> None:
    if msg.body.get("bounce"):
        raise Dead(f"mailbox of {ctx.user} is full")  # retrying won't help: straight to the dead queue
    await handled.put(f"send_email: mail for {ctx.user} (attempt {msg.attempt})")


@pool.consumer("app.#", queue="audit")
async def audit(ctx: Context, msg: Message[Any]) -> None:
    await handled.put(f"audit: {msg.routing_key} {msg.body}")


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    async with pool.running(), Publisher(namespace=NAMESPACE, exchange=EXCHANGE) as publisher:
        await publisher.publish("app.send_email", {"user": "ada"})
        await publisher.publish("app.send_email", {"user": "bob", "bounce": True})
        await publisher.publish("app.user.signed_up", {"user": "cyd"})
        for _ in range(4):  # 2 mails (one fails) + 3 audit copies, minus the failed mail
            print(await asyncio.wait_for(handled.get(), timeout=30))
    print(f"done; the bounced mail waits in {pool.dead_queue}")


if __name__ == "__main__":
    asyncio.run(main())
