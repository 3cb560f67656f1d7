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
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from event import wire
from event.dead import DeadMessage
from event.errors import ConfigurationError, ConnectionFailed, PublishError, Unroutable
from event.gateway.apipage import render_api_page
from event.gateway.backend import (
    Backend,
    GatewayConfig,
    ManagementUnavailable,
    NoSuchQueue,
    NotConsumed,
    NotRouted,
    NoWorker,
    parse_at,
)
from event.gateway.morgue import DeadFilter, dead_key
from event.gateway.openapi import openapi_document
from event.gateway.pull import MAX_LEASE_S, MAX_WAIT_S, NoLease, PullQueues
from event.gateway.security import SESSION_COOKIE, Guard, Secrets

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_REQUEST_DELAY_S = 366 * 24 * 3600  # beyond a year a delay is a mistake, and far beyond one it overflows
MAX_DEAD_OFFSET = 100_000  # the dead queue's cap
MAX_DEAD_LIMIT = 500
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

Endpoint = Callable[[Request], Awaitable[Response]]


class NoSuchPullQueue(LookupError):
    """Not a pull queue of this gateway (answered with 404, naming them)."""


def _number(request: Request, name: str, default: float, minimum: float, maximum: float) -> float:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name}={text!r} must be a number of seconds") from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise BadRequest(f"{name}={text!r} must be between {minimum:g} and {maximum:g} seconds")
    return value


class BadRequest(ValueError):
    """A request the gateway cannot carry out as sent; the text says why (answered with 400)."""


class UnsupportedType(ValueError):
    """A body whose content type the gateway does not publish; the text says what to send (415)."""


def _only(request: Request, *names: str) -> None:
    """Refuse query parameters the route does not take: a typo (``delay=5`` for ``in=5``) would
    otherwise be ignored and the request carried out as if it had not been given."""
    unknown = sorted(set(request.query_params.keys()) - set(names))
    if unknown:
        takes = f"it takes {', '.join(names)}" if names else "it takes none"
        raise BadRequest(
            f"unknown query parameter {', '.join(map(repr, unknown))} for {request.url.path}: {takes}"
        )


def _error(status: int, reason: str, *, problem: str | None = None) -> JSONResponse:
    # problem (503s only): "broker" or "management", what the page names as the thing to fix.
    body = {"error": reason} if problem is None else {"error": reason, "problem": problem}
    return JSONResponse(body, status_code=status)


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
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_REQUEST_DELAY_S:
            raise BadRequest(f"in={in_text!r} must be between 0 and {MAX_REQUEST_DELAY_S} seconds")
        return seconds, None
    if at_text is not None:
        try:
            when = parse_at(at_text)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if when.timestamp() - datetime.now(UTC).timestamp() > MAX_REQUEST_DELAY_S:
            raise BadRequest(f"at={at_text!r} is more than {MAX_REQUEST_DELAY_S} seconds away")
        return None, when
    return None, None


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _TooLarge()
    return bytes(body)


def _json(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("the body is empty: send the event's payload as JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


def is_json(media: str) -> bool:
    """Whether a media type is JSON (``application/json``, ``application/*+json``)."""
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


FILTER_PARAMS = ("routing_key", "queue", "error", "since", "until")


def _filter(request: Request) -> DeadFilter:
    """The dead-queue filter in the query (each parameter optional; times ISO 8601 with a zone)."""
    text = {name: request.query_params.get(name) or None for name in ("routing_key", "queue", "error")}
    times: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        given = request.query_params.get(name)
        try:
            times[name] = parse_at(given) if given is not None else None
        except ValueError as exc:
            raise BadRequest(str(exc).replace("at=", f"{name}=", 1)) from None
    return DeadFilter(text["routing_key"], text["queue"], text["error"], times["since"], times["until"])


@dataclass(frozen=True, slots=True)
class Selection:
    """The dead messages a requeue or delete is for: one id, a predicate, or (neither) all."""

    message_id: str | None
    where: Callable[[DeadMessage], bool] | None
    everything: bool = False
    count: int | None = None  # how many keys were picked, when picked one by one

    def __post_init__(self) -> None:
        if self.everything and self.where is not None:  # matching=true with no filter: all of them
            object.__setattr__(self, "where", None)

    @property
    def one(self) -> bool:
        """Whether it names one message by its id (so that finding none is a 404)."""
        return self.message_id is not None


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
            except UnsupportedType as exc:
                return _error(415, str(exc))
            except NotRouted as exc:
                return _error(
                    409,
                    f"no queue is bound to receive routing key {exc.args[0]!r} on exchange "
                    f"{self.backend.config.exchange!r}: nothing was published (mandatory=true)",
                )
            except ConfigurationError as exc:  # a routing key or a pattern the library refuses
                return _error(400, self._scrub(str(exc)))
            except _TooLarge:
                return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
            except NoSuchPullQueue as exc:
                return _error(404, str(exc))
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
            except ManagementUnavailable as exc:
                return _error(503, self._scrub(str(exc)), problem="management")
            except (ConnectionFailed, PublishError, OSError) as exc:
                log.warning("%s %s: %s", request.method, request.url.path, self._scrub(str(exc)))
                done = "" if request.method in ("GET", "HEAD") else "nothing was done: "
                return _error(503, self._scrub(f"{done}{exc}"), problem="broker")

        return run

    def _scrub(self, text: str) -> str:
        # The library's messages carry redacted URLs already; this guards against any that do not.
        return text.replace(self._password, "***") if self._password else text

    # --- publishing ----------------------------------------------------------------------------------

    async def publish(self, request: Request) -> Response:
        _only(request, "in", "at", "mandatory")
        routing_key = request.path_params["routing_key"]
        wire.validate_routing_key(routing_key, pattern=False)
        delay, at = _delay(request)
        mandatory = _flag(request, "mandatory")
        content_type = request.headers.get("content-type", "").strip()
        media = wire.media_type(content_type) or "application/json"  # no type given: JSON, as ever
        body = await _body(request)
        if is_json(media):
            message_id, routed = await self.backend.publish(
                routing_key, _json(body), delay=delay, at=at, mandatory=mandatory
            )
        elif media in FORM_TYPES:
            # curl -d sends this type when none is given: publishing it as a form is never what was meant.
            raise UnsupportedType(
                f"{media} is a form, not an event: send JSON with 'Content-Type: application/json' "
                f"(curl: -H 'Content-Type: application/json'), or the body's real type to publish it as bytes"
            )
        else:
            if delay is not None or at is not None:
                raise BadRequest(f"in= and at= delay JSON bodies only; this body is {media}")
            message_id, routed = await self.backend.publish_bytes(
                routing_key, body, content_type, mandatory=mandatory
            )
        return JSONResponse(
            {"message_id": message_id, "routing_key": routing_key, "delay": delay, "routed": routed},
            status_code=202,
        )

    # --- queues and the dead queue -------------------------------------------------------------------

    async def queues(self, request: Request) -> Response:
        _only(request)
        return JSONResponse({"queues": await self.backend.queues()})

    # --- HTTP workers that pull -----------------------------------------------------------------------

    def _pulled(self, queue: str) -> PullQueues:
        pulled = self.backend.pulled
        if pulled is None or queue not in pulled.waiting:
            names = ", ".join(pulled.names) if pulled else "none (start event serve with --pull NAME=KEY)"
            raise NoSuchPullQueue(f"{queue!r} is not a pull queue of this gateway; its pull queues: {names}")
        return pulled

    async def pull_next(self, request: Request) -> Response:
        _only(request, "lease", "wait")
        queue = request.path_params["queue"]
        pulled = self._pulled(queue)
        lease = _number(request, "lease", 60.0, 1.0, MAX_LEASE_S)
        wait = _number(request, "wait", 0.0, 0.0, MAX_WAIT_S)
        taken = await pulled.next(queue, lease_s=lease, wait_s=wait)
        if taken is None:
            return Response(status_code=204)
        return JSONResponse(taken)

    async def pull_ack(self, request: Request) -> Response:
        _only(request)
        queue, lease = request.path_params["queue"], request.path_params["lease"]
        try:
            self._pulled(queue).ack(queue, lease)
        except NoLease:
            return _error(404, f"no lease {lease!r} is running on {queue!r}: answered already, or it expired "
                          "and the message went back to be pulled again")  # fmt: skip
        return JSONResponse({"lease": lease, "acked": True})

    async def pull_fail(self, request: Request) -> Response:
        _only(request, "error", "retry_after", "dead")
        queue, lease = request.path_params["queue"], request.path_params["lease"]
        error = request.query_params.get("error") or "failed in an HTTP worker"
        retry_after = (
            _number(request, "retry_after", 0.0, 0.0, MAX_REQUEST_DELAY_S)
            if request.query_params.get("retry_after") is not None
            else None
        )
        dead = _flag(request, "dead")
        try:
            self._pulled(queue).fail(queue, lease, error=error, retry_after=retry_after, dead=dead)
        except NoLease:
            return _error(404, f"no lease {lease!r} is running on {queue!r}: answered already, or it expired "
                          "and the message went back to be pulled again")  # fmt: skip
        return JSONResponse({"lease": lease, "failed": True, "dead": dead})

    async def pull_stats(self, request: Request) -> Response:
        _only(request)
        pulled = self.backend.pulled
        return JSONResponse(pulled.stats() if pulled else {"queues": {}, "leased": 0, "expired": 0})

    async def workers(self, request: Request) -> Response:
        _only(request)
        return JSONResponse({"workers": await self.backend.workers()})

    async def history(self, request: Request) -> Response:
        _only(request)
        return JSONResponse(self.backend.history.as_dict())

    async def dead(self, request: Request) -> Response:
        _only(request, "offset", "limit", *FILTER_PARAMS)
        offset = _count(request, "offset", 0, 0, MAX_DEAD_OFFSET)
        limit = _count(request, "limit", 50, 1, MAX_DEAD_LIMIT)
        return JSONResponse(await self.backend.dead(offset=offset, limit=limit, where=_filter(request)))

    async def dead_message(self, request: Request) -> Response:
        _only(request)
        key = request.path_params["key"]
        found = await self.backend.dead_message(key)
        if found is None:
            return _error(404, f"no dead message has the id {key!r} (as last read)")
        return JSONResponse(found)

    async def dead_queue(self, request: Request) -> Response:
        # One route for both methods, so that a 405 lists them all in its Allow header.
        return await (self.purge(request) if request.method == "DELETE" else self.dead(request))

    def _selection(self, request: Request) -> Selection:
        """Which dead messages a requeue or delete is for: exactly one of message_id, key (repeated:
        those selected on the page), all=true, matching=true (with the list's filter)."""
        message_id = request.query_params.get("message_id")
        keys = request.query_params.getlist("key")
        everything = _flag(request, "all")
        matching = _flag(request, "matching")
        given = [name for name, on in (("message_id", message_id is not None), ("key", bool(keys)),
                 ("all=true", everything), ("matching=true", matching)) if on]  # fmt: skip
        if len(given) > 1:
            raise BadRequest(
                f"give one of message_id, key, all=true or matching=true, not {' and '.join(given)}"
            )
        if not given:
            raise BadRequest(
                "say which dead messages: message_id=ID, key=ID (repeatable), all=true, or matching=true"
            )
        if message_id == "" or "" in keys:
            raise BadRequest("message_id or key is empty")
        where = _filter(request)
        if not matching and not where.empty:
            raise BadRequest("routing_key, queue, error, since and until select only with matching=true")
        if keys:
            wanted = frozenset(keys)
            return Selection(None, lambda m: dead_key(m) in wanted, everything=False, count=len(wanted))
        if matching:
            return Selection(None, where, everything=where.empty)
        return Selection(message_id, None, everything=everything)

    async def requeue(self, request: Request) -> Response:
        _only(request, "message_id", "key", "all", "matching", *FILTER_PARAMS)
        chosen = self._selection(request)
        try:
            report = await self.backend.requeue(message_id=chosen.message_id, where=chosen.where)
        except ConfigurationError:
            return _error(404, f"there is no dead queue {self.backend.config.dead_queue!r} yet")
        left = [{"message_id": mid, "reason": self._scrub(reason)} for mid, reason in report.left]
        if chosen.one and not report.requeued and not left:
            return _error(404, f"no dead message has the id {chosen.message_id!r}")
        return JSONResponse({"requeued": report.requeued, "left": left})

    async def delete(self, request: Request) -> Response:
        _only(request, "message_id", "key", "all", "matching", "confirm", *FILTER_PARAMS)
        chosen = self._selection(request)
        if chosen.message_id is None and chosen.count is None and not _flag(request, "confirm"):
            raise BadRequest("deleting every (matching) dead message is for good: add confirm=true")
        return await self._discard(chosen)

    async def purge(self, request: Request) -> Response:
        _only(request, "confirm")
        if not _flag(request, "confirm"):
            raise BadRequest("purging the dead queue deletes its messages for good: add confirm=true")
        return await self._discard(Selection(None, None, everything=True))

    async def _discard(self, chosen: Selection) -> Response:
        try:
            deleted = await self.backend.discard(message_id=chosen.message_id, where=chosen.where)
        except ConfigurationError:
            return _error(404, f"there is no dead queue {self.backend.config.dead_queue!r} yet")
        if chosen.one and not deleted:
            return _error(404, f"no dead message has the id {chosen.message_id!r}")
        return JSONResponse({"deleted": deleted})

    # --- pause / resume ------------------------------------------------------------------------------

    async def pause(self, request: Request) -> Response:
        return await self._command(request, "pause")

    async def resume(self, request: Request) -> Response:
        return await self._command(request, "resume")

    async def _command(self, request: Request, action: str) -> Response:
        _only(request)
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
        _only(request)
        return JSONResponse(openapi_document())

    async def api_page(self, request: Request) -> Response:
        _only(request)
        return HTMLResponse(render_api_page(openapi_document()))

    async def favicon(self, request: Request) -> Response:
        icon = resources.files("event.gateway").joinpath("dashboard", "favicon.svg").read_bytes()
        return Response(icon, media_type="image/svg+xml", headers={"cache-control": "max-age=86400"})

    async def health(self, request: Request) -> Response:
        _only(request)
        return PlainTextResponse("ok\n")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such route: 404, a method the route lacks: 405) as JSON too."""
    assert isinstance(exc, HTTPException)
    reasons = {
        404: f"no such route: {request.url.path} (the API is described at /api and /openapi.json)",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    response = _error(exc.status_code, reasons.get(exc.status_code, exc.detail))
    response.headers.update(exc.headers or {})
    return response


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
        backend.history.start()
        try:
            async with backend.pulled.running() if backend.pulled else contextlib.nullcontext():
                yield
        finally:
            await backend.close()

    routes = [
        Route("/", g(gateway.index), methods=["GET"]),
        Route("/login", g(gateway.login), methods=["POST"]),
        Route("/logout", g(gateway.logout), methods=["POST"]),
        Route("/openapi.json", g(gateway.openapi), methods=["GET"]),
        Route("/api", g(gateway.api_page), methods=["GET"]),
        Route("/healthz", g(gateway.health), methods=["GET"]),
        Route("/favicon.ico", g(gateway.favicon), methods=["GET"]),
        Route("/publish/{routing_key}", g(gateway.publish), methods=["POST"]),
        Route("/api/queues", g(gateway.queues), methods=["GET"]),
        Route("/api/history", g(gateway.history), methods=["GET"]),
        Route("/api/workers", g(gateway.workers), methods=["GET"]),
        Route("/api/pull", g(gateway.pull_stats), methods=["GET"]),
        Route("/api/queues/{queue}/next", g(gateway.pull_next), methods=["GET"]),
        Route("/api/queues/{queue}/leases/{lease}/ack", g(gateway.pull_ack), methods=["POST"]),
        Route("/api/queues/{queue}/leases/{lease}/fail", g(gateway.pull_fail), methods=["POST"]),
        Route("/api/dead", g(gateway.dead_queue), methods=["GET", "DELETE"]),
        Route("/api/dead/requeue", g(gateway.requeue), methods=["POST"]),
        Route("/api/dead/messages/{key:path}", g(gateway.dead_message), methods=["GET"]),
        Route("/api/dead/delete", g(gateway.delete), methods=["POST"]),
        Route("/api/consumers/{queue}/pause", g(gateway.pause), methods=["POST"]),
        Route("/api/consumers/{queue}/resume", g(gateway.resume), methods=["POST"]),
        Mount("/static", app=StaticFiles(packages=[("event.gateway", "dashboard")]), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.add_middleware(Guard, keys=keys, loopback_only=loopback_only)
    app.state.backend = backend
    return app
