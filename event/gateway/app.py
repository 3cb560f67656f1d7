"""The gateway's HTTP side: routes, request checking, error answers, the dashboard page.

Built on starlette (routing, requests, responses, static files): the requests are few and simple,
and an ASGI app mounts into any other (``Mount("/events", app=create_app(...))``).
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from event import wire
from event.errors import ConfigurationError, ConnectionFailed, PublishError, Unroutable
from event.gateway.backend import Backend, GatewayConfig, NoSuchQueue, NotConsumed, NoWorker, parse_at
from event.gateway.openapi import document
from event.gateway.security import SESSION_COOKIE, Guard, Secrets

log = logging.getLogger("event.gateway")

MAX_BODY_BYTES = 1024 * 1024
MAX_DELAY_S = 366 * 24 * 3600  # beyond a year a delay is a mistake, and far beyond one it overflows
MAX_DEAD_OFFSET = 10_000
MAX_DEAD_LIMIT = 500

Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(ValueError):
    """A request the gateway cannot carry out as sent; the text says why (answered with 400)."""


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return False
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name}={value!r} must be true or false")


def _count(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name}={text!r} must be a whole number") from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name}={value} must be between {minimum} and {maximum}")
    return value


def _delay(request: Request) -> tuple[float | None, datetime | None]:
    in_text, at_text = request.query_params.get("in"), request.query_params.get("at")
    if in_text is not None and at_text is not None:
        raise BadRequest("give in=SECONDS or at=TIME, not both")
    if in_text is not None:
        try:
            seconds = float(in_text)
        except ValueError:
            raise BadRequest(f"in={in_text!r} must be a number of seconds") from None
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DELAY_S:
            raise BadRequest(f"in={in_text!r} must be between 0 and {MAX_DELAY_S} seconds")
        return seconds, None
    if at_text is not None:
        try:
            when = parse_at(at_text)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if when.timestamp() - datetime.now(UTC).timestamp() > MAX_DELAY_S:
            raise BadRequest(f"at={at_text!r} is more than {MAX_DELAY_S} seconds away")
        return None, when
    return None, None


async def _json_body(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _TooLarge()
    if not body.strip():
        raise BadRequest("the body is empty: send the event's payload as JSON")
    try:
        return orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


class _TooLarge(Exception):
    pass


class Gateway:
    """The routes over one :class:`Backend`."""

    def __init__(self, backend: Backend, keys: Secrets) -> None:
        self.backend = backend
        self.keys = keys
        self._password = urlsplit(backend.config.url.split(",")[0]).password or ""

    def guarded(self, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` with the library's errors turned into answers that name the problem."""

        async def run(request: Request) -> Response:
            try:
                return await endpoint(request)
            except BadRequest as exc:
                return _error(400, self._scrub(str(exc)))
            except ConfigurationError as exc:  # a routing key or a pattern the library refuses
                return _error(400, self._scrub(str(exc)))
            except _TooLarge:
                return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
            except NoSuchQueue as exc:
                return _error(404, f"{exc.args[0]!r} is not a consumer queue of this namespace")
            except NotConsumed as exc:
                return _error(409, f"no worker consumes {exc.args[0]!r} now: there is nothing to pause")
            except NoWorker as exc:
                return _error(
                    409, f"no running worker of this namespace listens for commands to {exc.args[0]!r}"
                )
            except Unroutable as exc:
                return _error(409, self._scrub(str(exc)))
            except (ConnectionFailed, PublishError, OSError) as exc:
                log.warning("%s %s: %s", request.method, request.url.path, self._scrub(str(exc)))
                return _error(503, self._scrub(f"the broker is unreachable, nothing was done: {exc}"))

        return run

    def _scrub(self, text: str) -> str:
        # The library's messages carry redacted URLs already; this guards against any that do not.
        return text.replace(self._password, "***") if self._password else text

    # --- publishing ----------------------------------------------------------------------------------

    async def publish(self, request: Request) -> Response:
        routing_key = request.path_params["routing_key"]
        wire.validate_routing_key(routing_key, pattern=False)
        delay, at = _delay(request)
        payload = await _json_body(request)
        message_id = await self.backend.publish(routing_key, payload, delay=delay, at=at)
        return JSONResponse(
            {"message_id": message_id, "routing_key": routing_key, "delay": delay}, status_code=202
        )

    # --- queues and the dead queue -------------------------------------------------------------------

    async def queues(self, request: Request) -> Response:
        return JSONResponse({"queues": await self.backend.queues()})

    async def dead(self, request: Request) -> Response:
        offset = _count(request, "offset", 0, 0, MAX_DEAD_OFFSET)
        limit = _count(request, "limit", 50, 1, MAX_DEAD_LIMIT)
        return JSONResponse(await self.backend.dead(offset=offset, limit=limit))

    async def dead_queue(self, request: Request) -> Response:
        # One route for both methods, so that a 405 lists them all in its Allow header.
        return await (self.purge(request) if request.method == "DELETE" else self.dead(request))

    def _selection(self, request: Request) -> str | None:
        message_id = request.query_params.get("message_id")
        everything = _flag(request, "all")
        if message_id is not None and everything:
            raise BadRequest("give message_id or all=true, not both")
        if message_id is None and not everything:
            raise BadRequest("say which dead messages: message_id=ID, or all=true")
        if message_id == "":
            raise BadRequest("message_id is empty")
        return message_id

    async def requeue(self, request: Request) -> Response:
        message_id = self._selection(request)
        try:
            report = await self.backend.requeue(message_id=message_id)
        except ConfigurationError:
            return _error(404, f"there is no dead queue {self.backend.config.dead_queue!r} yet")
        left = [{"message_id": mid, "reason": self._scrub(reason)} for mid, reason in report.left]
        if message_id is not None and not report.requeued and not left:
            return _error(404, f"no dead message has the id {message_id!r}")
        return JSONResponse({"requeued": report.requeued, "left": left})

    async def delete(self, request: Request) -> Response:
        message_id = self._selection(request)
        if message_id is None and not _flag(request, "confirm"):
            raise BadRequest("deleting every dead message is for good: add confirm=true")
        return await self._discard(message_id)

    async def purge(self, request: Request) -> Response:
        if not _flag(request, "confirm"):
            raise BadRequest("purging the dead queue deletes its messages for good: add confirm=true")
        return await self._discard(None)

    async def _discard(self, message_id: str | None) -> Response:
        try:
            deleted = await self.backend.discard(message_id=message_id)
        except ConfigurationError:
            return _error(404, f"there is no dead queue {self.backend.config.dead_queue!r} yet")
        if message_id is not None and not deleted:
            return _error(404, f"no dead message has the id {message_id!r}")
        return JSONResponse({"deleted": deleted})

    # --- pause / resume ------------------------------------------------------------------------------

    async def pause(self, request: Request) -> Response:
        return await self._command(request, "pause")

    async def resume(self, request: Request) -> Response:
        return await self._command(request, "resume")

    async def _command(self, request: Request, action: str) -> Response:
        queue = request.path_params["queue"]
        await self.backend.command(action, queue)
        return JSONResponse({"queue": queue, "paused": action == "pause"}, status_code=202)

    # --- pages ---------------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        if not self.keys.authorised(request.headers, dict(request.cookies)):
            return HTMLResponse(_page("login.html", error=""))
        config = self.backend.config
        return HTMLResponse(
            _page(
                "index.html",
                csrf=self.keys.csrf_token,
                namespace=config.namespace or "(none)",
                exchange=config.exchange,
                broker=config.shown_url,
                signout="" if self.keys.token is None else "signed-in",
            )
        )

    async def login(self, request: Request) -> Response:
        # An urlencoded form of one field: parsed here rather than pulling in python-multipart.
        body = await request.body()
        given = parse_qs(body[:4096].decode(errors="replace")).get("token", [""])[0]
        if not self.keys.token_matches(given.strip()):
            return HTMLResponse(_page("login.html", error="That is not the token."), status_code=401)
        response = RedirectResponse("./", status_code=303)
        if self.keys.token is not None:
            response.set_cookie(
                SESSION_COOKIE, self.keys.session_value(), httponly=True, samesite="strict", path="/"
            )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("./", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(document())

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")


def _page(name: str, **values: str) -> str:
    text = resources.files("event.gateway").joinpath("dashboard", name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return text


def create_app(
    config: GatewayConfig,
    *,
    token: str | None = None,
    loopback_only: bool = True,
    backend: Backend | None = None,
) -> Starlette:
    """The gateway as an ASGI app: run it with :func:`event.gateway.serve` or mount it in your own.

    ``token`` (None: no authentication) is what clients send as ``Authorization: Bearer``;
    ``loopback_only`` answers only requests addressed to a loopback host name (DNS-rebinding guard).
    """
    backend = backend or Backend(config)
    keys = Secrets(token)
    gateway = Gateway(backend, keys)
    g = gateway.guarded

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await backend.close()

    routes = [
        Route("/", g(gateway.index), methods=["GET"]),
        Route("/login", g(gateway.login), methods=["POST"]),
        Route("/logout", g(gateway.logout), methods=["POST"]),
        Route("/openapi.json", g(gateway.openapi), methods=["GET"]),
        Route("/healthz", g(gateway.health), methods=["GET"]),
        Route("/publish/{routing_key}", g(gateway.publish), methods=["POST"]),
        Route("/api/queues", g(gateway.queues), methods=["GET"]),
        Route("/api/dead", g(gateway.dead_queue), methods=["GET", "DELETE"]),
        Route("/api/dead/requeue", g(gateway.requeue), methods=["POST"]),
        Route("/api/dead/delete", g(gateway.delete), methods=["POST"]),
        Route("/api/consumers/{queue}/pause", g(gateway.pause), methods=["POST"]),
        Route("/api/consumers/{queue}/resume", g(gateway.resume), methods=["POST"]),
        Mount("/static", app=StaticFiles(packages=[("event.gateway", "dashboard")]), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(Guard, keys=keys, loopback_only=loopback_only)
    app.state.backend = backend
    return app
