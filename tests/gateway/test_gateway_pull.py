"""HTTP workers that pull from `event serve --pull`: 4 loops of plain HTTP calls take 300 jobs; a tenth
fail for good (dead, with their reason), some fail once and are retried by the pool's rules, some
leases are abandoned and the job comes back after its lease; every job is acked once or dead."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from gateway_support import gateway
from support import Isolation, Management, Probe, eventually

pytestmark = pytest.mark.timeout(180)

JOBS = 300


async def test_http_workers_pull_ack_fail_and_abandon_and_nothing_is_lost(
    amqp_url: str, iso: Isolation, management: Management
) -> None:
    queue = f"{iso.namespace}:jobs"
    acked: list[int] = []
    dead: list[int] = []
    abandoned: set[int] = set()
    retried: set[int] = set()

    async with (
        gateway(amqp_url, iso, management, "--pull", "jobs=pull.job") as gw,
        httpx.AsyncClient(base_url=gw.base, timeout=30) as client,
    ):
        for i in range(JOBS):
            sent = await client.post("/publish/pull.job", params={"mandatory": "true"}, json={"id": i})
            assert sent.status_code == 202, sent.text

        async def work() -> None:
            while len(acked) + len(dead) < JOBS:
                taken = await client.get(f"/api/queues/{queue}/next", params={"lease": "2", "wait": "1"})
                if taken.status_code == 204:
                    continue
                assert taken.status_code == 200, taken.text
                job: dict[str, Any] = taken.json()
                n, lease = job["body"]["id"], job["lease"]
                base = f"/api/queues/{queue}/leases/{lease}"
                if n % 10 == 0:
                    answer = await client.post(
                        f"{base}/fail", params={"error": f"bad job {n}", "dead": "true"}
                    )
                    dead.append(n)
                elif n % 20 == 5 and n not in abandoned:
                    abandoned.add(n)  # the worker vanished: no answer; the lease runs out
                    continue
                elif n % 50 == 7 and job["attempt"] == 1:
                    retried.add(n)
                    answer = await client.post(
                        f"{base}/fail", params={"error": "try later", "retry_after": "1"}
                    )
                else:
                    answer = await client.post(f"{base}/ack")
                    acked.append(n)
                assert answer.status_code == 200, answer.text

        await asyncio.wait_for(asyncio.gather(*(work() for _ in range(4))), timeout=120)
        assert sorted(acked + dead) == list(range(JOBS))  # each once: acked or dead, nothing lost
        assert sorted(dead) == list(range(0, JOBS, 10))
        assert abandoned == {n for n in range(JOBS) if n % 20 == 5} and abandoned <= set(acked)
        assert retried == {n for n in range(JOBS) if n % 50 == 7} and retried <= set(acked)

        answer = await client.post(f"/api/queues/{queue}/leases/no-such-lease/ack")
        assert answer.status_code == 404 and "expired" in answer.json()["error"]
        answer = await client.get(f"/api/queues/{iso.namespace}:other/next")
        assert answer.status_code == 404 and queue in answer.json()["error"]

        async def all_dead() -> bool:
            page = (await client.get("/api/dead", params={"error": "bad job", "limit": "1"})).json()
            return bool(page["matching"] == len(dead))

        await eventually(all_dead, timeout=30, interval=1)
        stats = (await client.get("/api/pull")).json()
        assert stats["expired"] >= len(abandoned) and stats["leased"] == 0

        async def empty() -> bool:  # every job acked in the broker too (management figures lag)
            rows = {r["name"]: r for r in (await client.get("/api/queues")).json()["queues"]}
            return bool(rows[queue]["messages"] == 0 and rows[queue]["unacked"] == 0)

        await eventually(empty, timeout=30, interval=1)


async def test_a_gateway_that_stops_hands_every_held_message_back_untouched(
    amqp_url: str, iso: Isolation, management: Management, probe: Probe
) -> None:
    queue = f"{iso.namespace}:jobs"
    async with (
        gateway(amqp_url, iso, management, "--pull", "jobs=pull.job") as gw,
        httpx.AsyncClient(base_url=gw.base, timeout=30) as client,
    ):
        for i in range(3):
            assert (await client.post("/publish/pull.job", json={"id": i})).json()["routed"] is True
        leased = await client.get(f"/api/queues/{queue}/next", params={"wait": "5"})
        assert leased.status_code == 200 and leased.json()["attempt"] == 1

    async def all_back() -> bool:
        return await probe.depth(queue) == 3

    await eventually(all_back, timeout=20)
    back = await probe.take_all(queue)
    assert sorted(m.body for m in back) == [b'{"id":0}', b'{"id":1}', b'{"id":2}']
    assert all(not (m.header.properties.headers or {}) for m in back)  # no failure counted, no retry copy
