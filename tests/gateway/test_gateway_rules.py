"""The gateway's safety rules without a broker: binds, tokens, cross-site requests, CSRF."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from event import ConfigurationError

pytest.importorskip("starlette", reason="the serve extra (starlette) is missing")

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from event.gateway.security import Guard, Secrets, check_bind, is_loopback, parse_bind


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com", ""])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_a_non_loopback_bind_needs_a_token() -> None:
    with pytest.raises(ConfigurationError, match=r"refusing to serve on 0\.0\.0\.0 without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "a-token-of-sixteen-chars")
    check_bind("127.0.0.1", None)


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:9", ("::1", 9)), ("0.0.0.0:0", ("0.0.0.0", 0))],
)
def test_bind_addresses(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["8080", "host:", ":8080", "host:http", "host:70000"])
def test_bad_bind_addresses_say_the_form(bind: str) -> None:
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        parse_bind(bind)


def client(token: str | None, keys: Secrets | None = None) -> tuple[httpx.AsyncClient, Secrets]:
    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("done")

    keys = keys or Secrets(token)
    app = Starlette(
        routes=[
            Route("/api/x", ok, methods=["GET", "POST"]),
            Route("/login", ok, methods=["POST"]),
            Route("/logout", ok, methods=["POST"]),
        ]
    )
    app.add_middleware(Guard, keys=keys, loopback_only=token is None)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080"), keys


async def test_programs_post_without_csrf_but_browsers_need_same_origin_and_the_token() -> None:
    http, keys = client(None)
    assert (await http.post("/api/x")).status_code == 200  # curl: no Origin, no cookies
    evil = {"Origin": "http://evil.example", "X-CSRF-Token": keys.csrf_token}
    cross = await http.post("/api/x", headers=evil)
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    site = await http.post("/api/x", headers={"Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    same = {"Origin": "http://127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"}
    assert (await http.post("/api/x", headers=same)).status_code == 403  # same origin, but no CSRF token
    assert (await http.post("/api/x", headers={**same, "X-CSRF-Token": "guess"})).status_code == 403
    assert (await http.post("/api/x", headers={**same, "X-CSRF-Token": keys.csrf_token})).status_code == 200


async def test_loopback_only_refuses_other_host_names() -> None:
    http, _ = client(None)
    response = await http.get("/api/x", headers={"Host": "rebound.example:8080"})
    assert response.status_code == 421
    assert (await http.get("/api/x", headers={"Host": "localhost:8080"})).status_code == 200


async def test_with_a_token_requests_need_it_and_every_answer_has_the_security_headers() -> None:
    http, keys = client("sixteen-chars-token")
    denied = await http.get("/api/x")
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    wrong = {"Authorization": "Bearer sixteen-chars-tokeN"}
    assert (await http.get("/api/x", headers=wrong)).status_code == 401
    allowed = await http.get("/api/x", headers={"Authorization": "Bearer sixteen-chars-token"})
    assert allowed.status_code == 200
    assert "frame-ancestors 'none'" in allowed.headers["content-security-policy"]
    assert allowed.headers["x-frame-options"] == "DENY"
    # Not no-referrer: with it Chromium posts a same-origin form with "Origin: null", refused below.
    assert allowed.headers["referrer-policy"] == "same-origin"
    http.cookies.set("event_session", keys.session_value())
    assert (await http.get("/api/x")).status_code == 200


@given(st.text(max_size=40))
def test_only_the_token_matches(given_token: str) -> None:
    keys = Secrets("the-right-token-123")
    assert keys.token_matches(given_token) == (given_token == "the-right-token-123")


async def test_the_sign_in_and_out_forms_need_the_same_origin_but_no_csrf_header() -> None:
    http, _ = client("sixteen-chars-token")
    form = {"Origin": "http://127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"}
    for path in ("/login", "/logout"):
        assert (await http.post(path, headers=form)).status_code == 200
        assert (await http.post(path, headers={"Origin": "null"})).status_code == 403
        assert (await http.post(path, headers={"Sec-Fetch-Site": "cross-site"})).status_code == 403
