"""`event dead list/requeue/purge` end to end, beside a running worker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from support import Isolation, Probe, eventually

from event import Dead, Message, Publisher, WorkerPool, wire
from event.dead import DeadQueue


async def event_cli(*args: str, url: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.cli", *args,
        env={**os.environ, "AMQP_URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_list_requeue_and_purge_while_a_worker_runs(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    url = pool_kwargs["url"]
    where = ["--namespace", iso.namespace, "--exchange", iso.exchange]
    pool = WorkerPool(**pool_kwargs)
    healthy = False
    handled: list[tuple[str, int, str]] = []

    @pool.consumer("app.orders.*")
    async def orders(ctx: object, msg: Message[Any]) -> None:
        if not healthy:
            raise Dead("payments are down")
        handled.append((msg.body["n"], msg.attempt, msg.routing_key))

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.orders.placed", {"n": "a"}, message_id="m-a")
        await publisher.publish("app.orders.placed", {"n": "b"}, message_id="m-b")
        await publisher.publish("app.orders.cancelled", {"n": "c"}, message_id="m-c")

        async def three_dead() -> bool:
            return await probe.depth(dead_queue) == 3

        await eventually(three_dead)

        code, out, err = await event_cli("dead", "list", "--json", *where, url=url)
        assert code == 0, err
        listing = json.loads(out)
        assert listing["queue"] == dead_queue and listing["total"] == 3
        assert [m["message_id"] for m in listing["messages"]] == ["m-a", "m-b", "m-c"]
        first = listing["messages"][0]
        assert first["routing_key"] == "app.orders.placed"
        assert first["queue"] == f"{iso.namespace}:orders"
        assert first["error"] == "Dead: payments are down"
        assert first["attempts"] == 1
        assert first["body_preview"] == '{"n":"a"}'
        assert await probe.depth(dead_queue) == 3  # listing consumed nothing

        code, out, _ = await event_cli("dead", "list", "--limit", "1", *where, url=url)
        assert code == 0 and "3 message(s), showing the first 1" in out and "m-a" in out and "m-b" not in out

        healthy = True
        code, out, err = await event_cli("dead", "requeue", "--message-id", "m-b", *where, url=url)
        assert (code, out.strip()) == (0, f"requeued 1 message(s) from {dead_queue}"), err
        await eventually(lambda: handled == [("b", 1, "app.orders.placed")])

        code, out, err = await event_cli(
            "dead", "requeue", "--routing-key", "app.orders.cancelled", *where, url=url
        )
        assert code == 0, err
        await eventually(lambda: ("c", 1, "app.orders.cancelled") in handled)
        assert await probe.depth(dead_queue) == 1

        code, _, err = await event_cli("dead", "requeue", *where, url=url)
        assert code == 2 and "say which dead messages" in err

        code, _, err = await event_cli("dead", "purge", *where, url=url)  # no --yes, no terminal
        assert code == 2 and "--yes" in err
        code, out, err = await event_cli("dead", "purge", "--yes", *where, url=url)
        assert (code, out.strip()) == (0, f"purged 1 message(s) from {dead_queue}"), err
        assert await probe.depth(dead_queue) == 0
    assert sorted(n for n, _, _ in handled) == ["b", "c"]  # "a" was purged, never handled


async def test_requeue_resets_the_retry_count_and_keeps_what_it_cannot_send(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.x", retries=0)
    async def x(ctx: object, msg: Message[Any]) -> None: ...

    async with pool.running():
        pass  # declares the queues
    headers = {
        "x-death": [{"count": 4}],
        "CC": ["z"],
        "event-error": "E",
        "event-failed-at": 1,
        "event-retries": 4,
        "event-routing-key": "app.x",
        "event-queue": f"{iso.namespace}:x",
    }
    await probe.publish(
        "", dead_queue, b"{}", content_type="application/json", message_id="ok", headers=headers
    )
    gone = {**headers, "event-queue": f"{iso.namespace}:deleted"}
    await probe.publish(
        "", dead_queue, b"{}", content_type="application/json", message_id="gone", headers=gone
    )

    async with DeadQueue(pool_kwargs["url"], namespace=iso.namespace, exchange=iso.exchange) as dead:
        report = await dead.requeue(everything=True)
    assert report.requeued == ["ok"]
    assert [message_id for message_id, _ in report.left] == ["gone"]
    assert "matched no queue" in report.left[0][1]
    [back] = await probe.take_all(f"{iso.namespace}:x")
    assert back.header.properties.headers == {
        "event-retries": 0,
        "event-routing-key": "app.x",
        "event-queue": f"{iso.namespace}:x",
    }
    [kept] = await probe.take_all(dead_queue)
    assert kept.header.properties.message_id == "gone"


async def test_dead_tools_name_a_missing_dead_queue(amqp_url: str, iso: Isolation) -> None:
    code, _, err = await event_cli("dead", "list", "--namespace", iso.namespace, url=amqp_url)
    assert code == 2
    assert f"no dead queue '{iso.namespace}:hutch_dead_queue'" in err
