"""A small app in one script, against the local broker (or $AMQP_URL):

    pip install -e . && python examples/demo.py

With $AMQP_URL unset and no broker answering on this machine, it runs on event's in-memory broker
(:class:`event.testing.TestBroker`, its clock moved along by the script) and says so. With $AMQP_URL
set and that broker unreachable, it says so in one line and exits 69. (EVENT_DEMO_LOCAL_URL changes
where it looks for the local broker: the tests point it at a closed port.)

Two consumers with a middleware and a context object, a typed payload, a delayed publish and a cron
schedule. It declares its queues in namespace `demo` on the exchange `hutch`, prints what the
consumers saw (one mail bounces on purpose into the dead queue `demo:hutch_dead_queue`), then stops
the pool the way SIGTERM would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from event import CallNext, ConnectionFailed, Context, Dead, Message, Publisher, WorkerPool
from event.config import DEFAULT_URL, redact_url
from event.testing import TestBroker

NAMESPACE = os.environ.get("EVENT_DEMO_NAMESPACE", "demo")
EXCHANGE = os.environ.get("EVENT_DEMO_EXCHANGE", "hutch")
LOCAL_URL = os.environ.get("EVENT_DEMO_LOCAL_URL", DEFAULT_URL)
START_A_BROKER = "docker run -d --name rabbitmq -p 5672:5672 -p 15672:15672 rabbitmq:3-management"

URL = os.environ.get("AMQP_URL") or LOCAL_URL

pool = WorkerPool(URL, namespace=NAMESPACE, exchange=EXCHANGE, concurrency=20)
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


async def exercise(publisher: Publisher) -> list[str]:
    """Publish the demo's events and collect what the consumers saw."""
    seen: list[str] = []
    await publisher.publish("app.send_email", Mail("ada"))
    await publisher.publish("app.send_email", Mail("bob", bounce=True))
    await publisher.publish("app.user.signed_up", {"user": "cyd"})
    await publisher.publish_in(2, "app.send_email", Mail("dan"))  # delivered after 5 s, the first level
    while not ("send_email: Dear dan" in seen and "heartbeat" in seen):
        seen.append(await asyncio.wait_for(lines.get(), timeout=30))
    return seen


async def answers(url: str) -> bool:
    """Whether anything listens at the broker address of ``url`` (within a second)."""
    parts = urlsplit(url)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def in_memory(publisher: Publisher) -> list[str]:
    """The demo on the in-memory broker, its virtual clock moved 1 s every 50 ms of real time."""
    async with TestBroker(pool, publisher) as broker:

        async def tick() -> None:
            while True:
                await broker.advance(1)
                await asyncio.sleep(0.05)

        ticking = asyncio.create_task(tick())
        try:
            return await exercise(publisher)
        finally:
            ticking.cancel()


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    chosen = os.environ.get("AMQP_URL")
    publisher = Publisher(URL, namespace=NAMESPACE, exchange=EXCHANGE)
    if not chosen and not await answers(LOCAL_URL):
        print(
            f"no RabbitMQ at {redact_url(LOCAL_URL)}: running on event's in-memory broker "
            f"(event.testing.TestBroker); for a real one: {START_A_BROKER}"
        )
        seen = await in_memory(publisher)
    else:
        try:
            async with pool.running(), publisher:
                seen = await exercise(publisher)
        except ConnectionFailed as exc:  # the message names the URL (password hidden) and the fix
            print(f"demo: {exc}; or unset AMQP_URL to run on the in-memory broker", file=sys.stderr)
            return 69
    for line in sorted(set(seen)):
        print(line)
    print(f"done; the bounced mail waits in {pool.dead_queue}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
