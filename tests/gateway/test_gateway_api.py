"""The HTTP API refuses mistakes instead of carrying them out silently: unroutable keys, unknown query
parameters, content types, and every error as JSON (404 and 405 too); `/api` describes it for people.
`event serve` on the shared broker, a queue of the test's own bound to read what was published."""

from __future__ import annotations

import httpx
import pytest
from gateway_support import gateway
from support import Isolation, Management, Probe, eventually

pytestmark = pytest.mark.timeout(120)


async def test_publish_says_whether_a_queue_got_it_and_mandatory_refuses_an_unroutable_key(
    amqp_url: str, iso: Isolation, management: Management, probe: Probe
) -> None:
    async with gateway(amqp_url, iso, management) as gw, httpx.AsyncClient(base_url=gw.base) as client:
        lost = await client.post("/publish/api.nobody", json={"n": 1})
        assert lost.status_code == 202 and lost.json()["routed"] is False, lost.text
        refused = await client.post("/publish/api.nobody", params={"mandatory": "true"}, json={"n": 2})
        assert refused.status_code == 409, refused.text
        assert (
            "'api.nobody'" in refused.json()["error"] and "nothing was published" in refused.json()["error"]
        )

        queue = f"{iso.namespace}:api-probe"
        channel = await probe.channel()
        await channel.queue_declare(queue, durable=True)
        await channel.queue_bind(queue, iso.exchange, routing_key="api.#")
        routed = await client.post("/publish/api.json", params={"mandatory": "true"}, json={"n": 3})
        assert routed.status_code == 202 and routed.json()["routed"] is True, routed.text
        later = await client.post("/publish/api.later", params={"in": "5"}, json={"n": 4})
        assert later.status_code == 202 and later.json()["routed"] is None  # routed when due

        # Another type than JSON: published as it came, with its content type.
        raw = await client.post(
            "/publish/api.text",
            content=b"plain \xff bytes",
            headers={"Content-Type": "text/plain; charset=latin-1"},
        )
        assert raw.status_code == 202 and raw.json()["routed"] is True, raw.text

        async def both_arrived() -> bool:
            return await probe.depth(queue) == 2

        await eventually(both_arrived, timeout=10)
        first, second = await probe.take_all(queue)
        assert first.header.properties.content_type == "application/json" and first.body == b'{"n":3}'
        assert second.header.properties.content_type == "text/plain; charset=latin-1"
        assert second.body == b"plain \xff bytes"
        assert second.header.properties.message_id == raw.json()["message_id"]


async def test_mistakes_are_refused_each_with_a_json_error_that_names_it(
    amqp_url: str, iso: Isolation, management: Management
) -> None:
    async with gateway(amqp_url, iso, management) as gw, httpx.AsyncClient(base_url=gw.base) as client:
        typo = await client.post("/publish/api.x", params={"delay": "5"}, json={})
        assert (
            typo.status_code == 400 and "'delay'" in typo.json()["error"] and "in, at" in typo.json()["error"]
        )
        assert (await client.get("/api/queues", params={"role": "dead"})).status_code == 400
        assert (await client.get("/api/dead", params={"confirm": "true"})).status_code == 400

        form = await client.post("/publish/api.x", data={"order": "42"})  # curl -d's default type
        assert form.status_code == 415 and "application/json" in form.json()["error"]
        not_json = await client.post(
            "/publish/api.x", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
        delayed_bytes = await client.post(
            "/publish/api.x", params={"in": "5"}, content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert delayed_bytes.status_code == 400

        missing = await client.get("/no/such/route")
        assert missing.status_code == 404 and "/no/such/route" in missing.json()["error"]
        wrong = await client.get("/publish/api.x")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert "GET is not allowed" in wrong.json()["error"]

        page = await client.get("/api")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "POST /publish/{routing_key}" in page.text and "mandatory" in page.text
        icon = await client.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
