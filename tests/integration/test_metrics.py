"""Prometheus metrics count exactly what happened; /readyz follows the broker connection."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support import Isolation, Management, eventually

from event import Dead, Message, Publisher, WorkerPool
from event.endpoint import serve_endpoint
from event.metrics import exposition


async def get(port: int, path: str) -> tuple[int, str]:
    """GET from the endpoint, off the event loop (which serves it)."""
    return await asyncio.to_thread(_get, port, path)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def endpoint_for(pool: WorkerPool) -> tuple[asyncio.Server, int]:
    async def metrics() -> bytes:
        return exposition(pool.registry)

    async def ready() -> bool:
        return pool.ready

    server = await serve_endpoint("127.0.0.1", 0, metrics=metrics, ready=ready)
    return server, server.sockets[0].getsockname()[1]


async def test_metrics_count_handled_retried_and_dead_exactly(
    pool_kwargs: dict[str, Any], iso: Isolation
) -> None:
    pool = WorkerPool(**pool_kwargs)
    failed_once: set[int] = set()

    @pool.consumer("app.ok")
    async def ok(ctx: object, msg: Message[Any]) -> None:
        await asyncio.sleep(0.002)

    @pool.consumer("app.flaky", retries=3)
    async def flaky(ctx: object, msg: Message[Any]) -> None:
        if msg.body["n"] not in failed_once:
            failed_once.add(msg.body["n"])
            raise RuntimeError("first time fails")

    @pool.consumer("app.doomed", max_concurrency=3)
    async def doomed(ctx: object, msg: Message[Any]) -> None:
        raise Dead("never")

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        server, port = await endpoint_for(pool)
        try:
            await asyncio.gather(*(publisher.publish("app.ok", {"n": n}) for n in range(100)))
            await asyncio.gather(*(publisher.publish("app.flaky", {"n": n}) for n in range(5)))
            await asyncio.gather(*(publisher.publish("app.doomed", {"n": n}) for n in range(2)))

            async def flaky_done() -> bool:
                found = samples((await get(port, "/metrics"))[1])
                key = (
                    "event_messages_handled_total",
                    (("queue", f"{iso.namespace}:flaky"), ("routing_key", "app.flaky")),
                )
                return found.get(key) == 5

            await eventually(flaky_done, timeout=20, interval=0.5)
            status, text = await get(port, "/metrics")
        finally:
            server.close()
    assert status == 200
    found = samples(text)
    ns = iso.namespace

    def value(name: str, queue: str, key: str) -> float | None:
        return found.get((name, (("queue", f"{ns}:{queue}"), ("routing_key", key))))

    assert value("event_messages_received_total", "ok", "app.ok") == 100
    assert value("event_messages_handled_total", "ok", "app.ok") == 100
    assert value("event_messages_received_total", "flaky", "app.flaky") == 10
    assert value("event_messages_failed_total", "flaky", "app.flaky") == 5
    assert value("event_messages_retried_total", "flaky", "app.flaky") == 5
    assert value("event_messages_handled_total", "flaky", "app.flaky") == 5
    assert value("event_messages_dead_total", "doomed", "app.doomed") == 2
    assert value("event_messages_dead_total", "ok", "app.ok") is None
    assert found[("event_handler_duration_seconds_count", (("queue", f"{ns}:ok"),))] == 100
    assert found[("event_handler_duration_seconds_sum", (("queue", f"{ns}:ok"),))] >= 0.2
    assert found[("event_consumer_concurrency_limit", (("queue", f"{ns}:doomed"),))] == 3
    assert found[("event_published_total", (("exchange", f"{iso.exchange}.park"),))] == 5  # the retry copies
    assert found[("event_published_total", (("exchange", ""),))] == 2  # the dead copies
    assert found[("event_pool_concurrency_limit", ())] == 200
    for name, labels in found:
        assert "message_id" not in dict(labels), name  # no high-cardinality labels


async def test_two_pools_in_one_process_have_their_own_metrics(amqp_url: str) -> None:
    first, second = WorkerPool(amqp_url), WorkerPool(amqp_url)
    assert first.registry is not second.registry
    first.stats.reconnects = 3
    assert b"event_reconnects_total 3.0" in exposition(first.registry)
    assert b"event_reconnects_total 0.0" in exposition(second.registry)


async def test_readyz_follows_the_connection(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management
) -> None:
    name = f"ready-{iso.namespace}"
    pool = WorkerPool(**pool_kwargs, name=name)

    @pool.consumer("app.a")
    async def a(ctx: object, msg: Message[Any]) -> None: ...

    async with pool.running():
        server, port = await endpoint_for(pool)
        try:
            assert await get(port, "/readyz") == (200, "ready\n")
            assert await get(port, "/healthz") == (200, "ok\n")
            assert (await get(port, "/nope"))[0] == 404

            def closed() -> bool:
                return management.close_connections(name) == 1

            await eventually(closed, timeout=15, interval=0.5)

            async def status_is(code: int) -> bool:
                return (await get(port, "/readyz"))[0] == code

            await eventually(lambda: status_is(503), timeout=5, interval=0.1)
            assert (await get(port, "/healthz"))[0] == 200  # the process is up all the same
            await eventually(lambda: status_is(200), timeout=15, interval=0.2)
            found = samples((await get(port, "/metrics"))[1])
            assert found[("event_reconnects_total", ())] == 1
            assert found[("event_connected", ())] == 1
        finally:
            server.close()
