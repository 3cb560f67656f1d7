"""A small app in one script, against the local broker (or $AMQP_URL):

    pip install -e . && python examples/demo.py

Two consumers with a middleware and a context object, a typed payload, a delayed publish and a cron
schedule. It declares its queues in namespace `demo` on the exchange `hutch`, prints what the
consumers saw (one mail bounces on purpose into the dead queue `demo:hutch_dead_queue`), then stops
the pool the way SIGTERM would.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from event import CallNext, Context, Dead, Message, Publisher, WorkerPool

NAMESPACE = os.environ.get("EVENT_DEMO_NAMESPACE", "demo")
EXCHANGE = os.environ.get("EVENT_DEMO_EXCHANGE", "hutch")

pool = WorkerPool(namespace=NAMESPACE, exchange=EXCHANGE, concurrency=20)
lines: asyncio.Queue[str] = asyncio.Queue()


@dataclass
class Mail:
    """The payload of app.send_email: validated before the handler runs."""

    user: str
    bounce: bool = False


class MailContext(Context):
    """What the middleware finds out about a message before the handler runs."""

    greeting: str = ""


@pool.middleware
async def greet(ctx: Any, msg: Message[Any], call_next: CallNext) -> Any:
    if isinstance(ctx, MailContext):
        ctx.greeting = "Dear"
    return await call_next()


@pool.consumer("app.send_email", context=MailContext, max_concurrency=5, prefetch=30)
async def send_email(ctx: MailContext, msg: Message[Mail]) -> None:
    if msg.body.bounce:
        raise Dead(f"mailbox of {msg.body.user} is full")  # retrying won't help: straight to the dead queue
    await lines.put(f"send_email: {ctx.greeting} {msg.body.user}")


@pool.cron("* * * * * *", "app.heartbeat", payload={"beat": True}, name="demo-heartbeat")
async def heartbeat(ctx: Context, msg: Message[Any]) -> None:
    await lines.put("heartbeat")


@pool.consumer("app.user.*", queue="audit")
async def audit(ctx: Context, msg: Message[Any]) -> None:
    await lines.put(f"audit: {msg.routing_key} {msg.body}")


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    seen: list[str] = []
    async with pool.running(), Publisher(namespace=NAMESPACE, exchange=EXCHANGE) as publisher:
        await publisher.publish("app.send_email", Mail("ada"))
        await publisher.publish("app.send_email", Mail("bob", bounce=True))
        await publisher.publish("app.user.signed_up", {"user": "cyd"})
        await publisher.publish_in(2, "app.send_email", Mail("dan"))  # delivered after 5 s, the first level
        while not ("send_email: Dear dan" in seen and "heartbeat" in seen):
            seen.append(await asyncio.wait_for(lines.get(), timeout=30))
    for line in sorted(set(seen)):
        print(line)
    print(f"done; the bounced mail waits in {pool.dead_queue}")


if __name__ == "__main__":
    asyncio.run(main())
