"""`event serve` against a real broker and a real `event worker`: publishing over HTTP, bad requests,
an unreachable broker, pause and resume, and the bind and token rules."""

from __future__ import annotations

import asyncio
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import CuttableLink, free_port, gateway, journal, worker
from support import Isolation, Management, Probe, eventually

from event import Dead, Message, Publisher, WorkerPool

pytestmark = pytest.mark.timeout(120)


async def test_500_messages_published_over_http_all_reach_the_worker(
    amqp_url: str, iso: Isolation, management: Management, tmp_path: Path
) -> None:
    path = tmp_path / "journal"
    async with worker(amqp_url, iso, path), gateway(amqp_url, iso, management) as gw:
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        limit = asyncio.Semaphore(20)
        ids: list[str] = []

        async def post(client: httpx.AsyncClient, i: int) -> None:
            params = {"in": "1"} if i % 10 == 0 else {"at": soon} if i % 25 == 1 else {}
            async with limit:
                response = await client.post("/publish/gw.work", params=params, json={"id": i})
            assert response.status_code == 202, response.text
            ids.append(response.json()["message_id"])

        async with httpx.AsyncClient(base_url=gw.base, timeout=30) as client:
            await asyncio.gather(*(post(client, i) for i in range(500)))
        assert len(set(ids)) == 500  # a message id per message

        await eventually(lambda: len(journal(path, "work")) >= 500, timeout=40)
        assert sorted(journal(path, "work")) == list(range(500))  # 70 of them delayed, none lost


async def test_bad_requests_get_400_naming_the_problem(
    amqp_url: str, iso: Isolation, management: Management
) -> None:
    cases = [
        ("/publish/app.*", {}, b"{}", "wildcard"),
        ("/publish/app..x", {}, b"{}", "empty word"),
        ("/publish/app.x", {}, b"{not json", "not JSON"),
        ("/publish/app.x", {}, b"", "empty"),
        ("/publish/app.x", {"in": "soon"}, b"{}", "number of seconds"),
        ("/publish/app.x", {"in": "-5"}, b"{}", "between 0"),
        ("/publish/app.x", {"in": "nan"}, b"{}", "between 0"),
        ("/publish/app.x", {"in": "5", "at": "2030-01-01T00:00:00Z"}, b"{}", "not both"),
        ("/publish/app.x", {"at": "2030-01-01T00:00:00"}, b"{}", "time zone"),
        ("/publish/app.x", {"at": "tomorrow"}, b"{}", "ISO 8601"),
        ("/api/dead/requeue", {}, b"", "message_id=ID, key=ID (repeatable), all=true"),
        ("/api/dead/delete", {"all": "true"}, b"", "confirm=true"),
    ]
    async with gateway(amqp_url, iso, management) as gw, httpx.AsyncClient(base_url=gw.base) as client:
        for path, params, body, reason in cases:
            response = await client.post(path, params=params, content=body)
            assert response.status_code == 400, (path, params, response.text)
            assert reason in response.json()["error"], (path, params, response.text)
        response = await client.delete("/api/dead")
        assert response.status_code == 400 and "confirm=true" in response.json()["error"]
        response = await client.get("/api/dead", params={"limit": "0"})
        assert response.status_code == 400 and "between 1 and 500" in response.json()["error"]
        response = await client.post("/publish/app.x", content=b"[" + b"1," * 600_000 + b"1]")
        assert response.status_code == 413
        response = await client.post(f"/api/consumers/{iso.namespace}:nothing/pause")
        assert response.status_code == 404 and "not a consumer queue" in response.json()["error"]


async def test_publish_answers_503_while_the_broker_is_unreachable_and_sends_nothing(
    amqp_url: str, iso: Isolation, management: Management, tmp_path: Path
) -> None:
    path = tmp_path / "journal"
    link = CuttableLink(amqp_url)
    await link.restore()
    async with worker(amqp_url, iso, path), gateway(link.url, iso, management) as gw:
        async with httpx.AsyncClient(base_url=gw.base, timeout=30) as client:

            async def publish(i: int) -> httpx.Response:
                return await client.post("/publish/gw.work", json={"id": i})

            assert all(r.status_code == 202 for r in await asyncio.gather(*map(publish, range(10))))
            await link.cut()
            refused = await asyncio.gather(*map(publish, range(100, 110)))
            assert [r.status_code for r in refused] == [503] * 10
            for response in refused:
                error = response.json()["error"]
                assert error.startswith("nothing was done: "), error
                assert "guest:guest" not in error and response.json()["problem"] == "broker"
            await link.restore()
            accepted = await asyncio.gather(*map(publish, range(200, 210)))
            assert [r.status_code for r in accepted] == [202] * 10

        wanted = [*range(10), *range(200, 210)]
        await eventually(lambda: sorted(journal(path, "work")) == wanted, timeout=20)
        await asyncio.sleep(1.0)  # anything half-sent during the cut would have arrived by now
        assert sorted(journal(path, "work")) == wanted
    await link.cut()
    assert "guest:guest" not in gw.output[0]


async def test_a_paused_consumer_takes_nothing_while_another_flows_then_drains_on_resume(
    amqp_url: str, iso: Isolation, management: Management, tmp_path: Path
) -> None:
    path = tmp_path / "journal"
    queue = f"{iso.namespace}:work"
    async with (
        worker(amqp_url, iso, path) as w,
        gateway(amqp_url, iso, management) as gw,
        httpx.AsyncClient(base_url=gw.base, timeout=30) as client,
        httpx.AsyncClient(base_url=w.base) as probe,
    ):
        response = await client.post(f"/api/consumers/{queue}/pause")
        assert response.status_code == 202, response.text

        async def paused_in_readyz() -> bool:
            return f"paused: {queue}" in (await probe.get("/readyz")).text

        await eventually(paused_in_readyz, timeout=10)
        metrics = (await probe.get("/metrics")).text
        assert f'event_consumer_paused{{queue="{queue}"}} 1.0' in metrics
        assert f'event_consumer_paused{{queue="{iso.namespace}:other"}} 0.0' in metrics
        rows = {row["name"]: row for row in (await client.get("/api/queues")).json()["queues"]}
        assert rows[queue]["paused"] is True and rows[f"{iso.namespace}:other"]["paused"] is False

        for i in range(100):
            for key in ("gw.work", "gw.other"):
                assert (await client.post(f"/publish/{key}", json={"id": i})).status_code == 202
        started = asyncio.get_running_loop().time()  # every message is in the queue from here on
        await eventually(lambda: len(journal(path, "other")) == 100, timeout=10)
        await asyncio.sleep(max(0.0, 5.0 - (asyncio.get_running_loop().time() - started)))
        assert journal(path, "work") == []  # 5 s with all 100 waiting: not one taken
        assert len(journal(path, "other")) == 100

        response = await client.post(f"/api/consumers/{queue}/resume")
        assert response.status_code == 202, response.text
        await eventually(lambda: len(journal(path, "work")) == 100, timeout=15)
        assert sorted(journal(path, "work")) == list(range(100))
        assert not await paused_in_readyz()


async def test_a_non_loopback_bind_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event.cli", "serve", "--bind", f"0.0.0.0:{free_port()}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    text = err.decode()
    assert "refusing to serve on 0.0.0.0 without a token" in text and "--token-file" in text


async def test_with_a_token_every_api_call_needs_it(
    amqp_url: str, iso: Isolation, management: Management, tmp_path: Path
) -> None:
    token = "s3cret-token-for-the-test"
    (tmp_path / "token").write_text(token + "\n")
    extra = ("--token-file", str(tmp_path / "token"))
    async with gateway(amqp_url, iso, management, *extra) as gw, httpx.AsyncClient(base_url=gw.base) as c:
        assert (await c.get("/api/queues")).status_code == 401
        assert (await c.get("/api/queues", headers={"Authorization": "Bearer wrong"})).status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        assert (await c.get("/api/queues", headers=good)).status_code == 200
        assert (await c.post("/publish/app.x", json={}, headers=good)).status_code == 202
        assert (await c.post("/publish/app.x", json={})).status_code == 401
        page = await c.get("/")
        assert page.status_code == 200 and 'name="token"' in page.text and "csrf-token" not in page.text
        login = await c.post("/login", data={"token": token}, follow_redirects=False)
        assert login.status_code == 303
        assert token not in login.headers["set-cookie"]  # the cookie holds a derived value only
        assert "csrf-token" in (await c.get("/")).text
        assert (await c.get("/api/queues")).status_code == 200  # with the session cookie now
        # A browser's change without the page's CSRF token is refused even with the cookie.
        assert (await c.post("/api/dead/requeue", params={"all": "true"})).status_code == 403
    assert token not in gw.output[0]


async def test_the_dead_queue_over_http_lists_deletes_requeues_and_purges(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs, grace=2)
    failing = {"on": True}
    handled: list[str] = []

    @pool.consumer("gw.fragile", queue="fragile")
    async def fragile(ctx: object, msg: Message[Any]) -> None:
        if failing["on"]:
            raise Dead(f"no stock for item {msg.body['item']}")
        handled.append(str(msg.message_id))

    async with (
        pool.running(),
        Publisher(**pool_kwargs) as publisher,
        gateway(pool_kwargs["url"], iso, management) as gw,
        httpx.AsyncClient(base_url=gw.base, timeout=30) as client,
    ):
        for item in range(4):
            await publisher.publish("gw.fragile", {"item": item}, message_id=f"item-{item}")

        async def four_dead() -> bool:
            return await probe.depth(pool.dead_queue) == 4

        await eventually(four_dead, timeout=20)
        failing["on"] = False
        page = (await client.get("/api/dead", params={"limit": "3"})).json()
        assert (page["exists"], page["total"], len(page["messages"])) == (True, 4, 3)
        assert [m["message_id"] for m in page["messages"]] == ["item-3", "item-2", "item-1"]  # newest first
        rest = (await client.get("/api/dead", params={"offset": "3"})).json()["messages"]
        assert [m["message_id"] for m in rest] == ["item-0"]
        oldest = rest[0]
        assert oldest["queue"] == f"{iso.namespace}:fragile" and oldest["attempts"] == 1
        assert oldest["error"] == "Dead: no stock for item 0" and oldest["body_preview"] == '{"item":0}'
        opened = (await client.get("/api/dead/messages/item-0")).json()
        assert opened["body"] == '{"item":0}' and opened["body_json"] == {"item": 0}
        assert opened["headers"]["event-error"] == oldest["error"]
        nothing = await client.get("/api/dead/messages/no-such-id")
        assert nothing.status_code == 404 and "no-such-id" in nothing.json()["error"]

        deleted = await client.post("/api/dead/delete", params={"message_id": "item-1"})
        assert deleted.status_code == 200 and deleted.json() == {"deleted": 1}
        missing = await client.post("/api/dead/requeue", params={"message_id": "item-1"})
        assert missing.status_code == 404 and "item-1" in missing.json()["error"]
        one = await client.post("/api/dead/requeue", params={"message_id": "item-2"})
        assert one.json() == {"requeued": ["item-2"], "left": []}
        await eventually(lambda: handled == ["item-2"], timeout=10)
        rest_requeued = (await client.post("/api/dead/requeue", params={"all": "true"})).json()
        assert sorted(rest_requeued["requeued"]) == ["item-0", "item-3"]
        await eventually(lambda: sorted(handled) == ["item-0", "item-2", "item-3"], timeout=10)
        purged = await client.delete("/api/dead", params={"confirm": "true"})
        assert purged.status_code == 200 and purged.json() == {"deleted": 0}


async def test_a_busy_bind_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "event.cli", "serve", "--bind", f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    [line] = err.decode().strip().splitlines()
    assert f"cannot serve on 127.0.0.1:{port} (--bind)" in line and "pick another port" in line


async def test_management_off_wrong_password_and_broker_down_each_say_so_at_start_and_on_every_call(
    amqp_url: str, iso: Isolation, management: Management
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    wrong = amqp_url.replace("guest:guest@", "guest:not-the-password@")
    assert wrong != amqp_url
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    cases = [
        # (broker URL, management URL, what the queue list says, what serve says at start)
        (amqp_url, closed, "rabbitmq-plugins enable rabbitmq_management", ["does not answer"]),
        (wrong, management.base, "refused the user 'guest' (401)", ["refused the login", "(401)"]),
        (down, closed, "does not answer", ["cannot reach RabbitMQ", "does not answer"]),
    ]
    for url, management_url, listed, started in cases:
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "event.cli", "serve", "--url", url, "--namespace", iso.namespace,
            "--exchange", iso.exchange, "--bind", f"127.0.0.1:{port}", "--management-url", management_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

                async def up() -> bool:
                    try:
                        return (await client.get("/healthz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await eventually(up, timeout=30)
                answer = await client.get("/api/queues")
                assert answer.status_code == 503 and listed in answer.json()["error"], answer.text
                assert answer.json()["problem"] == "management"
                if url == down:
                    dead = await client.get("/api/dead")
                    assert dead.status_code == 503 and dead.json()["problem"] == "broker"
                    assert "cannot reach RabbitMQ" in dead.json()["error"]
        finally:
            process.terminate()
            output = (await process.communicate())[0].decode()
        said_at_start = "WARNING event.gateway.server: event serve:"
        warnings = [line for line in output.splitlines() if said_at_start in line]
        assert len(warnings) == len(started), output
        for line, said in zip(warnings, started, strict=True):
            assert said in line, output
        assert "not-the-password" not in output and "Traceback" not in output
