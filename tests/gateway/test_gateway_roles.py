"""`/api/queues` shows every queue of a namespace in its role, and paused state as the broker shows it:
a real `event worker` (two consumers) and `event serve` on the shared broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import gateway, worker
from support import Isolation, Management, eventually

from event import wire
from event.control import VERSION

pytestmark = pytest.mark.timeout(120)


async def rows_of(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/api/queues")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["queues"]
    return rows


async def test_every_queue_in_its_role_park_levels_in_numeric_order_and_pause_only_where_consumed(
    amqp_url: str, iso: Isolation, management: Management, tmp_path: Path
) -> None:
    async with (
        worker(amqp_url, iso, tmp_path / "journal") as running,
        gateway(amqp_url, iso, management) as gw,
        httpx.AsyncClient(base_url=gw.base, timeout=30) as client,
    ):
        rows = await rows_of(client)
        roles = [row["role"] for row in rows]
        consumers = [row["name"] for row in rows if row["role"] == "consumer"]
        assert consumers == [f"{iso.namespace}:other", f"{iso.namespace}:work"]
        assert roles == sorted(roles, key=["consumer", "dead", "park", "delay", "control"].index)
        assert roles.count("control") == 1  # the one running worker's command queue
        park = [row for row in rows if row["role"] == "park"]
        assert [row["level_s"] for row in park] == sorted(wire.LEVELS)  # 5 before 10 before 10800
        assert [row["name"] for row in park] == [
            wire.park_queue_name(iso.namespace, iso.exchange, level) for level in sorted(wire.LEVELS)
        ]
        dead = next(row for row in rows if row["role"] == "dead")
        assert dead["ttl_ms"] == wire.DEAD_QUEUE_TTL_MS and dead["max_length"] == wire.DEAD_QUEUE_MAX_LENGTH
        assert all(row["pausable"] for row in rows if row["role"] == "consumer")
        assert not any(row.get("pausable") for row in rows if row["role"] != "consumer")

        # The workers view: the one running worker, where it runs and what it consumes (the management
        # API learns of a new consumer within its statistics interval).
        async def one_worker() -> bool:
            answer = (await client.get("/api/workers")).json()
            assert "workers" in answer, answer
            return len(answer["workers"]) == 1

        await eventually(one_worker, timeout=15)
        [one] = (await client.get("/api/workers")).json()["workers"]
        assert one["name"] == "event worker" and one["host"] == "127.0.0.1"
        assert one["queues"] == consumers and one["in_flight"] == 0
        # What the worker process reports of itself: its pid, event's version, each consumer's state.
        assert one["pid"] == running.process.pid and one["version"] == VERSION and one["hostname"]
        assert one["consumers"] == [{"queue": q, "in_flight": 0, "paused": False} for q in consumers]

        response = await client.post(f"/api/consumers/{park[0]['name']}/pause")
        assert response.status_code == 404 and "not a consumer queue" in response.json()["error"]
        response = await client.post(f"/api/consumers/{dead['name']}/pause")
        assert response.status_code == 404


async def test_paused_is_what_the_broker_shows_a_restarted_worker_consumes_and_is_not_paused(
    amqp_url: str, iso: Isolation, management: Management, tmp_path: Path
) -> None:
    queue = f"{iso.namespace}:work"
    async with gateway(amqp_url, iso, management) as gw, httpx.AsyncClient(base_url=gw.base) as client:

        async def state() -> tuple[bool, int]:
            row = next(r for r in await rows_of(client) if r["name"] == queue)
            return row["paused"], row["consumers"]

        async with worker(amqp_url, iso, tmp_path / "journal"):
            assert (await client.post(f"/api/consumers/{queue}/pause")).status_code == 202
            await eventually(lambda: _is(state, (True, 0)), timeout=10)
        # Commands are not kept: the new worker consumes the queue, and the page must not say paused.
        async with worker(amqp_url, iso, tmp_path / "journal"):
            await eventually(lambda: _is(state, (False, 1)), timeout=30)
        # No worker consumes it now: a pause would change nothing, and says so.
        await eventually(lambda: _is(state, (False, 0)), timeout=10)
        response = await client.post(f"/api/consumers/{queue}/pause")
        assert response.status_code == 409 and "no worker consumes" in response.json()["error"]


async def _is(state: Any, expected: tuple[bool, int]) -> bool:
    return bool(await state() == expected)
