"""Failures land in the bounded dead queue, confirmed, with the error named; the worker goes on."""

from __future__ import annotations

import time
from typing import Any

from support import Isolation, Probe, eventually

from event import Message, Publisher, WorkerPool, wire


async def test_failures_go_to_the_dead_queue_with_the_error_named_and_the_worker_goes_on(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    handled: list[Any] = []

    @pool.consumer("app.send_email", retries=0)
    async def send_email(ctx: object, msg: Message[Any]) -> None:
        if msg.body.get("explode"):
            raise RuntimeError("smtp said no")
        handled.append(msg.body)

    queue = f"{iso.namespace}:send_email"
    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    started = int(time.time() * 1000)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish(
            "app.send_email", {"explode": True}, headers={"trace": "t-1"}, message_id="m-raise"
        )
        await probe.publish(iso.exchange, "app.send_email", b"not json", content_type="application/json",
                            message_id="m-json", delivery_mode=2)  # fmt: skip
        await probe.publish(iso.exchange, "app.send_email", b'{"ok": 1}', content_type="text/plain",
                            message_id="m-type", delivery_mode=2)  # fmt: skip
        await publisher.publish("app.send_email", {"ok": 2})

        async def settled() -> bool:
            return handled == [{"ok": 2}] and await probe.depth(dead_queue) == 3

        await eventually(settled)
        assert await probe.depth(queue) == 0  # all acked: nothing waits, nothing half-done

    dead = {d.header.properties.message_id: d for d in await probe.take_all(dead_queue)}
    assert set(dead) == {"m-raise", "m-json", "m-type"}
    for message_id, error in [
        ("m-raise", "RuntimeError: smtp said no"),
        ("m-json", "DecodeError: body is not valid JSON"),
        ("m-type", "DecodeError: content type 'text/plain' is not application/json"),
    ]:
        headers = dead[message_id].header.properties.headers
        assert headers["event-error"].startswith(error), headers["event-error"]
        assert headers["event-queue"] == queue
        assert headers["event-routing-key"] == "app.send_email"
        assert headers["event-retries"] == 0
        assert started <= headers["event-failed-at"] <= int(time.time() * 1000)
        assert "CC" not in headers
        assert dead[message_id].header.properties.delivery_mode == 2
    assert dead["m-json"].body == b"not json"  # the body is kept as it came
    assert dead["m-raise"].header.properties.headers["trace"] == "t-1"  # original headers kept


async def test_a_failing_consumer_does_not_touch_another_consumers_copy(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    good: list[str] = []

    @pool.consumer("app.order.placed", retries=0)
    async def flaky(ctx: object, msg: Message[Any]) -> None:
        raise ValueError("nope")

    @pool.consumer("app.order.*")
    async def steady(ctx: object, msg: Message[Any]) -> None:
        good.append(msg.routing_key)

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.order.placed", {"n": 1})

        async def settled() -> bool:
            return good == ["app.order.placed"] and await probe.depth(dead_queue) == 1

        await eventually(settled)
    [dead] = await probe.take_all(dead_queue)
    assert dead.header.properties.headers["event-queue"] == f"{iso.namespace}:flaky"


async def test_a_base_exception_in_a_thread_handler_fails_the_message_not_the_worker(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    handled: list[int] = []

    @pool.consumer("app.sync", retries=0)
    def interrupted(ctx: object, msg: Message[Any]) -> None:
        if msg.body["n"] == 1:
            raise KeyboardInterrupt
        handled.append(msg.body["n"])

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.sync", {"n": 1})
        await publisher.publish("app.sync", {"n": 2})

        async def settled() -> bool:
            return handled == [2] and await probe.depth(dead_queue) == 1

        await eventually(settled)
    [dead] = await probe.take_all(dead_queue)
    error = dead.header.properties.headers["event-error"]
    assert error.startswith("HandlerAborted: handler raised KeyboardInterrupt")


async def test_a_handler_past_its_timeout_is_cancelled_and_dead_queued(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    import asyncio

    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.slow", timeout=0.2, retries=0)
    async def slow(ctx: object, msg: Message[Any]) -> None:
        await asyncio.sleep(30)

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.slow", {})

        async def settled() -> bool:
            return await probe.depth(dead_queue) == 1

        await eventually(settled, timeout=10)
    [dead] = await probe.take_all(dead_queue)
    assert dead.header.properties.headers["event-error"].startswith("TimeoutError")


async def test_oversized_bodies_and_middleware_errors_are_dead_queued_with_the_reason(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs, max_body_bytes=1000)
    handled: list[int] = []

    @pool.middleware
    async def strict(ctx: object, msg: Message[Any], call_next: Any) -> Any:
        if msg.body.get("n") == 2:
            raise PermissionError("middleware says no")
        return await call_next()

    @pool.consumer("app.x", retries=0)
    async def x(ctx: object, msg: Message[Any]) -> None:
        handled.append(msg.body["n"])

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.x", {"n": 1, "pad": "x" * 2000}, message_id="big")
        await publisher.publish("app.x", {"n": 2}, message_id="refused")
        await publisher.publish("app.x", {"n": 3})

        async def settled() -> bool:
            return handled == [3] and await probe.depth(dead_queue) == 2

        await eventually(settled)
    errors = {
        d.header.properties.message_id: d.header.properties.headers["event-error"]
        for d in await probe.take_all(dead_queue)
    }
    assert errors["big"].startswith("PayloadError: body of 2016 bytes is over the limit of 1000")
    assert errors["refused"] == "PermissionError: middleware says no"
