"""`event proxy` / pool.proxy() against a real HTTP app the test starts (aiohttp's server)."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web
from support import Isolation, Probe, eventually, http_app

from event import Publisher, WorkerPool, wire
from event.runners.hooks import DeadHook

KINDS = ("ok", "fail", "busy", "gone", "hang")
# Long enough that an answered job is not taken for a hung one on a loaded machine (seen at 0.5 s: the
# proxy then rightly retries a job the app had answered); a hung job hangs well past it.
TIMEOUT_S = 2.0
APP = Path(__file__).with_name("http_app.py")


class App:
    """The HTTP app of http_app.py, in its own process; :meth:`refresh` reads what it has seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[int, list[float]] = {}  # job -> arrival times
        self.answered: dict[int, list[int]] = {}  # job -> statuses sent
        self.headers: dict[int, dict[str, str]] = {}
        self.dead_letters: list[dict[str, Any]] = []

    async def refresh(self) -> App:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/state") as response:
            state = orjson.loads(await response.read())
        self.seen = defaultdict(list, {int(n): times for n, times in state["seen"].items()})
        self.answered = defaultdict(list, {int(n): codes for n, codes in state["answered"].items()})
        self.headers = {int(n): headers for n, headers in state["headers"].items()}
        self.dead_letters = state["dead_letters"]
        return self

    async def pause_each_answer(self, seconds: float) -> None:
        async with aiohttp.ClientSession() as session:
            (await session.post(f"{self.url}/pause", data=str(seconds))).raise_for_status()


@pytest.fixture
async def app() -> AsyncIterator[App]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(APP), str(TIMEOUT_S * 3), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int(await asyncio.wait_for(server.stdout.readline(), timeout=30))
        yield App(f"http://127.0.0.1:{port}")
    finally:
        server.kill()
        await server.wait()


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
                await app.refresh()
                return (
                    await probe.depth(pool.dead_queue) == len(expected_dead)
                    and sum(1 for n, k in jobs.items() if k in ("ok", "busy") and 200 in app.answered[n])
                    == 400
                )

            await eventually(settled, timeout=60, interval=0.25)

            async def all_told() -> bool:
                return len((await app.refresh()).dead_letters) == len(expected_dead)

            await eventually(all_told, timeout=20, interval=0.25)
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
    await app.pause_each_answer(0.05)
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

        async def answered_300() -> bool:
            return len((await app.refresh()).answered) >= 300

        await eventually(answered_300, timeout=30, interval=0.1)
        started_at_term = set((await app.refresh()).seen)
        worker.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(worker.communicate(), timeout=30)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 0, output.decode()
    answered = set((await app.refresh()).answered)
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


async def test_a_cookie_the_app_sets_is_not_sent_with_the_next_job(pool_kwargs: dict[str, Any]) -> None:
    # Each job is a request of its own: what the app set for one must not travel with another's.
    sent: list[str | None] = []

    async def job(request: web.Request) -> web.Response:
        sent.append(request.headers.get("Cookie"))
        return web.Response(text="ok", headers={"Set-Cookie": f"session=s{len(sent)}; Path=/"})

    pool = WorkerPool(**pool_kwargs, concurrency=1)
    async with http_app(job) as port:
        # A host name, not an address: a cookie store may refuse cookies from IP addresses anyway.
        proxy = pool.proxy("app.cookie", to=f"http://localhost:{port}/jobs", prefetch=1)
        try:
            async with pool.running(), Publisher(**pool_kwargs) as publisher:
                for n in range(3):
                    await publisher.publish("app.cookie", {"n": n})
                await eventually(lambda: len(sent) == 3)
        finally:
            await proxy.close()
    assert sent == [None, None, None]


async def test_a_message_id_http_cannot_carry_goes_dead_at_once_named(
    pool_kwargs: dict[str, Any], probe: Probe
) -> None:
    # The id travels in X-Event-Message-Id; a newline in it would split the request's headers, so the
    # message is not sent, not retried (it would fail the same way each time) and its error names why.
    seen: list[str] = []

    async def job(request: web.Request) -> web.Response:
        seen.append(request.headers["X-Event-Message-Id"])
        return web.Response(text="ok")

    pool = WorkerPool(**pool_kwargs, concurrency=2)
    async with http_app(job) as port:
        proxy = pool.proxy("app.job", to=f"http://127.0.0.1:{port}/jobs", retries=3)
        try:
            async with pool.running(), Publisher(**pool_kwargs) as publisher:
                await publisher.publish("app.job", {"n": 1}, message_id="bad\nX-Injected: 1")
                await publisher.publish("app.job", {"n": 2}, message_id="good")
                await eventually(lambda: seen == ["good"])

                async def dead_one() -> bool:
                    return await probe.depth(pool.dead_queue) == 1

                await eventually(dead_one, timeout=10)
        finally:
            await proxy.close()
    [dead] = await probe.take_all(pool.dead_queue)
    assert orjson.loads(dead.body) == {"n": 1}
    error = dead.header.properties.headers[wire.H_ERROR]
    assert "not sent" in error and "header" in error.lower(), error
    assert (
        pool.registry.get_sample_value(
            "event_runner_outcomes_total", {"queue": pool.consumers[0].queue, "outcome": "bad headers"}
        )
        == 1
    )


async def test_an_https_app_is_verified_against_the_trusted_roots(
    pool_kwargs: dict[str, Any], probe: Probe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client verifies against the system's roots; SSL_CERT_FILE names a private CA's file instead.
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    seen: list[bytes] = []

    async def job(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(text="ok")

    async with http_app(job, tls=server) as port:
        for trusted in (False, True):
            if trusted:
                ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
                monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
            pool = WorkerPool(**pool_kwargs, concurrency=1)
            proxy = pool.proxy("app.tls", to=f"https://localhost:{port}/jobs", retries=0)
            try:
                async with pool.running(), Publisher(**pool_kwargs) as publisher:
                    await publisher.publish("app.tls", {"trusted": trusted})
                    if trusted:
                        await eventually(lambda: seen == [b'{"trusted":true}'])
                    else:

                        async def dead_one(queue: str = pool.dead_queue) -> bool:
                            return await probe.depth(queue) == 1

                        await eventually(dead_one, timeout=10)
            finally:
                await proxy.close()
    [dead] = await probe.take_all(pool.dead_queue)
    assert orjson.loads(dead.body) == {"trusted": False}, "the untrusted certificate's message"
    error = dead.header.properties.headers[wire.H_ERROR]
    assert "could not connect: invalid peer certificate" in error, error
    assert seen == [b'{"trusted":true}'], "nothing reached the app over the untrusted connection"
