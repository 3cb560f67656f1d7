"""Typed payloads end to end, and a rate limit that holds to within 10% without losing anything."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from support import Isolation, Probe, eventually

from event import Message, Publisher, WorkerPool, wire


@dataclass
class SendEmail:
    to: str
    subject: str
    priority: int = 1


async def test_a_typed_handler_gets_its_type_and_a_bad_body_is_dead_with_the_field_named(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    received: list[SendEmail] = []
    as_argument: list[SendEmail] = []

    @pool.consumer("app.send_email", retries=5)
    async def send_email(ctx: object, msg: Message[SendEmail]) -> None:
        received.append(msg.body)

    @pool.consumer("app.send_email", queue="audit")
    def audit(ctx: object, msg: Message[Any], payload: SendEmail) -> None:
        as_argument.append(payload)

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.send_email", SendEmail("a@b.c", "hello"))
        await publisher.publish("app.send_email", {"to": 42}, message_id="bad")

        async def settled() -> bool:
            return len(received) == 1 and len(as_argument) == 1 and await probe.depth(dead_queue) == 2

        await eventually(settled)
    assert received == [SendEmail("a@b.c", "hello", 1)]
    assert as_argument == received
    dead = await probe.take_all(dead_queue)
    assert {d.header.properties.headers["event-queue"] for d in dead} == {
        f"{iso.namespace}:send_email",
        f"{iso.namespace}:audit",
    }
    for copy in dead:
        error = copy.header.properties.headers["event-error"]
        assert error.startswith("ValidationError: field 'to': expected str, got a number"), error
        assert "field 'subject': missing" in error
        assert copy.header.properties.headers["event-retries"] == 0  # not retried: it cannot succeed


async def test_rate_limit_holds_within_ten_percent_and_loses_nothing(pool_kwargs: dict[str, Any]) -> None:
    pool = WorkerPool(**pool_kwargs)
    handled: list[tuple[float, int]] = []

    @pool.consumer("app.limited", rate_limit="20/s", prefetch=200)
    async def limited(ctx: object, msg: Message[Any]) -> None:
        handled.append((time.monotonic(), msg.body["n"]))

    @pool.consumer("app.free")
    async def free(ctx: object, msg: Message[Any]) -> None:
        handled.append((time.monotonic(), -1))

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        for n in range(200):
            await publisher.publish("app.limited", {"n": n})
        await publisher.publish("app.free", {})
        await eventually(lambda: len(handled) == 201, timeout=30)
    limited_times = sorted(at for at, n in handled if n >= 0)
    rate = (len(limited_times) - 1) / (limited_times[-1] - limited_times[0])
    assert 18 <= rate <= 22, rate
    assert sorted(n for _, n in handled if n >= 0) == list(range(200))
    free_at = next(at for at, n in handled if n == -1)
    assert free_at < limited_times[-1] - 5  # the other consumer did not wait behind the limited one
