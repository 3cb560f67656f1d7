"""`event proxy` / pool.proxy() against a real HTTP app the test starts (aiohttp's server)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from support import Isolation, Probe, eventually

from event import Publisher, WorkerPool, wire
from event.runners.hooks import DeadHook

KINDS = ("ok", "fail", "busy", "gone", "hang")
TIMEOUT_S = 0.5


class App:
    """An HTTP app that answers each job as its body's ``kind`` says, and remembers every request."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.seen: dict[int, list[float]] = defaultdict(list)  # job -> arrival times
        self.answered: dict[int, list[int]] = defaultdict(list)  # job -> statuses sent
        self.headers: dict[int, dict[str, str]] = {}
        self.dead_letters: list[dict[str, Any]] = []
        self.url = ""

    async def job(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        n, kind = body["n"], body.get("kind", "ok")
        self.seen[n].append(time.monotonic())
        self.headers[n] = {**request.headers, "path": request.path}
        if self.pause:
            await asyncio.sleep(self.pause)
        if kind == "hang":
            await asyncio.sleep(TIMEOUT_S * 4)
        status, extra = 200, {}
        if kind == "fail":
            status = 500
        elif kind == "busy" and len(self.seen[n]) == 1:
            status, extra = 429, {"Retry-After": "2"}
        elif kind == "gone":
            status = 404
        self.answered[n].append(status)
        return web.Response(status=status, text=f"job {n} says {kind}", headers=extra)

    async def dead(self, request: web.Request) -> web.Response:
        self.dead_letters.append(orjson.loads(await request.read()))
        return web.Response(text="noted")


@pytest.fixture
async def app() -> AsyncIterator[App]:
    state = App()
    application = web.Application()
    application.router.add_post("/dead", state.dead)
    application.router.add_post("/jobs/{key}", state.job)
    runner = web.AppRunner(application, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.mark.xfail(
    strict=False,
    reason="open (issue 17): on the new driver about one run in two, a job the app answered 200 or 404 is "
    "requested again as attempt 2 (a duplicate, never a loss); not yet explained",
)
async def test_a_thousand_mixed_answers_are_acked_retried_or_dead_as_the_app_says(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, app: App
) -> None:
    hook = DeadHook(f"{app.url}/dead")
    pool = WorkerPool(**pool_kwargs, concurrency=300, on_dead=hook)
    proxy = pool.proxy("app.job", to=f"{app.url}/jobs/{{routing_key}}", timeout=TIMEOUT_S, retries=1,
                       prefetch=300, headers={"Authorization": "Bearer t"})  # fmt: skip
    jobs = {n: KINDS[n % len(KINDS)] for n in range(1000)}
    expected_dead = {n for n, kind in jobs.items() if kind in ("fail", "gone", "hang")}
    try:
        async with pool.running():
            async with Publisher(**pool_kwargs) as publisher:
                await asyncio.gather(
                    *(
                        publisher.publish("app.job", {"n": n, "kind": k}, message_id=f"m{n}")
                        for n, k in jobs.items()
                    )
                )

            async def settled() -> bool:
                return (
                    await probe.depth(pool.dead_queue) == len(expected_dead)
                    and sum(1 for n, k in jobs.items() if k in ("ok", "busy") and 200 in app.answered[n])
                    == 400
                )

            await eventually(settled, timeout=60)
            await eventually(lambda: len(app.dead_letters) == len(expected_dead), timeout=20)
    finally:
        await proxy.close()
        await hook.close()

    requests = {kind: sorted({len(app.seen[n]) for n, k in jobs.items() if k == kind}) for kind in KINDS}
    assert requests == {"ok": [1], "fail": [2], "busy": [2], "gone": [1], "hang": [2]}, "requests per job"
    for n, kind in jobs.items():
        if kind == "busy":
            assert app.seen[n][1] - app.seen[n][0] >= 2.0, f"job {n} came back before its Retry-After"
    first = app.headers[0]
    assert first["path"] == "/jobs/app.job" and first["Authorization"] == "Bearer t"
    assert first["X-Event-Routing-Key"] == "app.job" and first["X-Event-Message-Id"] == "m0"
    assert (
        first["X-Event-Queue"] == f"{iso.namespace}:app.job" and first["Content-Type"] == "application/json"
    )
    assert app.headers[2]["X-Event-Attempt"] == "2"  # a busy job's second request
    dead = await probe.take_all(pool.dead_queue)
    errors = {orjson.loads(m.body)["n"]: m.header.properties.headers[wire.H_ERROR] for m in dead}
    assert set(errors) == expected_dead, "dead messages"
    for n, error in errors.items():
        if jobs[n] == "gone":
            assert "answered 404: 'job" in error and f"job {n} says gone" in error
        elif jobs[n] == "fail":
            assert "answered 500" in error and f"job {n} says fail" in error
        else:
            assert f"gave no answer within {TIMEOUT_S:g} s" in error
    assert await probe.depth(f"{iso.namespace}:app.job") == 0
    assert {letter["message_id"] for letter in app.dead_letters} == {f"m{n}" for n in expected_dead}
    assert all(letter["queue"] == f"{iso.namespace}:app.job" for letter in app.dead_letters)
    for outcome, expected in {"200": 400, "500": 400, "429": 200, "404": 200, "timeout": 400}.items():
        got = pool.registry.get_sample_value(
            "event_runner_outcomes_total", {"queue": f"{iso.namespace}:app.job", "outcome": outcome}
        )
        assert got == expected, outcome


async def test_sigterm_mid_stream_loses_nothing(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, app: App
) -> None:
    app.pause = 0.05
    queue = f"{iso.namespace}:app.job"
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.cli", "proxy", "app.job", "--to", f"{app.url}/jobs/{{routing_key}}",
        "--url", pool_kwargs["url"], "--namespace", iso.namespace, "--exchange", iso.exchange,
        "--concurrency", "50", "--prefetch", "100", "--grace", "10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    try:

        async def consuming() -> bool:
            try:
                return (await (await probe.channel()).queue_declare(queue, passive=True)).consumer_count == 1
            except Exception:
                return False

        await eventually(consuming, timeout=30)
        async with Publisher(**pool_kwargs) as publisher:
            await asyncio.gather(*(publisher.publish("app.job", {"n": n}) for n in range(1000)))
        await eventually(lambda: len(app.answered) >= 300, timeout=30)
        started_at_term = set(app.seen)
        worker.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(worker.communicate(), timeout=30)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 0, output.decode()
    answered = set(app.answered)
    assert started_at_term <= answered, "a request in flight at SIGTERM was cut short within the grace"
    queued = [orjson.loads(m.body)["n"] for m in await probe.take_all(queue)]
    assert answered.isdisjoint(queued), "an answered job is still queued: its ack was lost"
    assert sorted([*answered, *queued]) == list(range(1000)), "a job was lost"
    assert 300 <= len(answered) < 1000
    assert await probe.depth(wire.dead_queue_name(iso.namespace, iso.exchange)) == 0


async def test_an_app_that_is_down_is_not_hammered(pool_kwargs: dict[str, Any], probe: Probe) -> None:
    pool = WorkerPool(**pool_kwargs, concurrency=50)
    proxy = pool.proxy("app.job", to="http://127.0.0.1:9/jobs", retries=5)  # nothing listens on port 9
    try:
        async with pool.running():
            async with Publisher(**pool_kwargs) as publisher:
                await asyncio.gather(*(publisher.publish("app.job", {"n": n}) for n in range(200)))
            queue = pool.consumers[0].queue
            labels = {"queue": queue, "routing_key": "app.job"}
            await eventually(
                lambda: pool.registry.get_sample_value("event_messages_retried_total", labels) == 200
            )
    finally:
        await proxy.close()

    def count(outcome: str) -> float:
        found = pool.registry.get_sample_value(
            "event_runner_outcomes_total", {"queue": queue, "outcome": outcome}
        )
        return found or 0.0

    # A refused connection opens a pause in which the other messages fail without a request being sent.
    assert count("unreachable") + count("held back") == 200
    assert count("held back") > count("unreachable"), "most messages should not have been sent"
