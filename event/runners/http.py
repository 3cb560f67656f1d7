"""The HTTP runner: each message is POSTed to an application server, whose status says what happened.

Like nginx in front of an app, the app never talks to the queue::

    2xx                          ack
    429 / 503 with Retry-After   Retry(in_=those seconds): back after that long, through the delay levels
    429 without Retry-After      an ordinary failure (the app is busy, not wrong): back-off, then dead
    other 4xx                    Dead: the app says this message can never succeed
    5xx, 3xx, timeout, refused   an ordinary failure: retried with back-off, then the dead queue

The client is pyreqwest: the Rust HTTP stack of reqwest and hyper (among the most used HTTP clients of
any language) behind a typed asyncio API, with keep-alive connection pooling and per-request timeouts,
released about monthly with wheels for every platform we run on. It replaced aiohttp because the
proxy's cost is mostly its HTTP client's: in ``benches/proxy.py``, on this project's 2-core machine, one
keep-alive POST cost the worker 126-148 us of CPU through pyreqwest and 261-287 us through aiohttp,
and the proxy went from 0.61-0.76 to 0.84-0.92 of a plain aiohttp loop's rate (``docs/benchmarks.md``).
httpx was slower still (90-150 requests/s against aiohttp's 1,800-5,000: its pool serialises under
concurrency).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, PyreqwestError
from pyreqwest.http import Url
from pyreqwest.response import Response

from event import wire
from event.config import check_seconds, redact_url
from event.errors import ConfigurationError
from event.message import Message
from event.runners.counts import OutcomeCounts
from event.signals import Dead, Retry

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
PREVIEW_BYTES = 200  # of a failed response, in event-error (the header is cut at 1 KiB anyway)
KEEP_BYTES = 64 * 1024  # of any response body kept in memory; the rest is read and dropped
KEEPALIVE_S = 30.0  # an idle kept-alive connection is closed after that long
# After a refused connection, requests are not sent for a while, doubling up to the longest pause:
# an app that is down gets one request per pause from this worker, not one per message.
OUTAGE_PAUSES_S = (0.5, 10.0)
RETRY_AFTER_STATUSES = (429, 503)  # the answers whose Retry-After says when to try again
ROUTING_KEY_FIELD = "{routing_key}"
URL_CACHE = 1000  # URLs per routing key remembered (routing keys are the application's few names)
_SECONDS = re.compile(r"[0-9]+")

ProxyHandler = Callable[[Any, Message[Any]], Awaitable[None]]


class AppFailed(Exception):
    """The app answered with a status that asks for a retry with back-off (5xx, 3xx, a bare 429)."""


class AppUnreachable(ConnectionError):
    """The app could not be reached, or did not answer in time."""


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host (``{routing_key}`` allowed); else ConfigurationError."""
    parts = urlsplit(url.replace(ROUTING_KEY_FIELD, "key"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"proxy URL {redact_url(url)!r} must be an http(s):// URL with a host")
    if "{" in url.replace(ROUTING_KEY_FIELD, ""):
        raise ConfigurationError(f"proxy URL {redact_url(url)!r}: only {ROUTING_KEY_FIELD} may be filled in")
    return url


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """The delay a ``Retry-After`` header asks for: delta-seconds or an HTTP date; None when unusable."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def preview(body: bytes) -> str:
    """The first bytes of a response, as text safe for a log line or the ``event-error`` header."""
    text = body[:PREVIEW_BYTES].decode(errors="replace")
    return repr(text + ("..." if len(body) > PREVIEW_BYTES else ""))


def judge(status: int, retry_after: str | None, body: bytes, where: str, now: datetime) -> Exception | None:
    """What an answer means for its message: None (ack) or the exception the handler raises."""
    if 200 <= status < 300:
        return None
    text = f"{where} answered {status}: {preview(body)}"
    if status in RETRY_AFTER_STATUSES:
        delay = retry_after_seconds(retry_after, now)
        if delay is not None:
            return Retry(f"{text}; Retry-After: {retry_after}", in_=delay)
        if status == 429:
            return AppFailed(text)
    if 400 <= status < 500:
        return Dead(text)
    return AppFailed(text)


class HttpProxy:
    """POSTs each message's body, unchanged, to ``url``; its :attr:`handler` is an ordinary consumer's.

    ``{routing_key}`` in ``url`` is replaced by the message's routing key. Every request carries
    ``X-Event-Routing-Key``, ``X-Event-Message-Id``, ``X-Event-Attempt``, ``X-Event-Queue`` and
    ``X-Event-Timestamp`` (Unix seconds, when the message has one), then ``headers``. ``timeout`` bounds
    a request from start to the last byte. The pool's concurrency bounds the requests in flight;
    connections are kept alive and reused. Call :meth:`close` once the pool has stopped.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        counts: OutcomeCounts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = check_url(url)
        self.timeout = check_seconds("proxy timeout", timeout, allow_zero=False)
        self.headers = dict(headers or {})
        for name, value in self.headers.items():
            if not name or any(ch.isspace() or ch == ":" for ch in name) or "\n" in value or "\r" in value:
                raise ConfigurationError(f"proxy header {name!r}: {value!r} is not a valid HTTP header")
        self.counts = counts or OutcomeCounts()
        self.clock = clock
        self._urls: dict[str, Url] = {}  # parsed once per routing key, not by the client per request
        self._client: Client | None = None
        self._pause_s = OUTAGE_PAUSES_S[0]
        self._down_until = 0.0
        self._down_because = ""
        self.handler = self._make_handler()

    def __repr__(self) -> str:
        return f"HttpProxy({redact_url(self.url)!r})"

    def _make_handler(self) -> ProxyHandler:
        async def proxy(ctx: Any, msg: Message[Any]) -> None:
            await self.send(msg)

        proxy.__qualname__ = f"proxy to {redact_url(self.url)}"
        return proxy

    def url_for(self, routing_key: str) -> str:
        """The URL a message with ``routing_key`` is POSTed to."""
        return self.url.replace(ROUTING_KEY_FIELD, quote(routing_key, safe=""))

    def _remember_url(self, routing_key: str) -> Url:
        url = Url(self.url_for(routing_key))  # parsed once
        if len(self._urls) < URL_CACHE:
            self._urls[routing_key] = url
        return url

    async def send(self, msg: Message[Any]) -> None:
        """POST ``msg`` and return on 2xx; raise what the answer means otherwise (see the module)."""
        url = self._urls.get(msg.routing_key) or self._remember_url(msg.routing_key)
        loop = asyncio.get_running_loop()
        if self._down_until and loop.time() < self._down_until:
            self.counts.count(msg.queue, "held back")
            left = self._down_until - loop.time()
            raise AppUnreachable(f"{_post(url)} not tried: the app is unreachable "
                                 f"({self._down_because}); next try in {left:.1f} s")  # fmt: skip
        headers = {
            "Content-Type": wire.CONTENT_TYPE,  # dispatch hands on JSON bodies only
            "X-Event-Routing-Key": msg.routing_key,
            "X-Event-Message-Id": msg.message_id or "",
            "X-Event-Attempt": str(msg.attempt),
            "X-Event-Queue": msg.queue,
        }
        if msg.timestamp is not None:
            headers["X-Event-Timestamp"] = str(int(msg.timestamp.timestamp()))
        if self.headers:
            headers.update(self.headers)
        if self._client is None:
            self._client = http_client(self.timeout)
        try:
            request = self._client.post(url).headers(headers).body_bytes(msg.raw).build_streamed()
        except ValueError as exc:  # the message's id or routing key holds a character HTTP forbids
            self.counts.count(msg.queue, "bad headers")
            raise Dead(f"{_post(url)} not sent: {exc} (from the message's properties)") from exc
        started = time.perf_counter()
        try:
            async with request as response:
                status = response.status
                # Read only where judge() looks at it: each header read is a call into the client.
                retry_after = response.get_header("Retry-After") if status in RETRY_AFTER_STATUSES else None
                body = await _read_bounded(response)
        except TimeoutError as exc:  # pyreqwest's timeouts (the total one among them) are TimeoutErrors
            self.counts.count(msg.queue, "timeout")
            raise AppUnreachable(f"{_post(url)} gave no answer within {self.timeout:g} s") from exc
        except ConnectError as exc:
            self.counts.count(msg.queue, "unreachable")
            self._down(loop, _reason(exc))
            raise AppUnreachable(f"{_post(url)} could not connect: {_reason(exc)}") from exc
        except PyreqwestError as exc:
            self.counts.count(msg.queue, "unreachable")
            raise AppUnreachable(f"{_post(url)} failed: {type(exc).__name__}: {_reason(exc)}") from exc
        self._pause_s, self._down_until = OUTAGE_PAUSES_S[0], 0.0
        self.counts.count(msg.queue, str(status))
        if 200 <= status < 300:  # the common case, kept cheap: no log record, no clock
            return
        where = _post(url)
        log.debug("%s for message %s: %d in %.3f s, body %s", where, msg.message_id, status,
                  time.perf_counter() - started, preview(body))  # fmt: skip
        outcome = judge(status, retry_after, body, where, datetime.fromtimestamp(self.clock(), UTC))
        if outcome is not None:
            raise outcome

    def _down(self, loop: asyncio.AbstractEventLoop, because: str) -> None:
        self._down_until = loop.time() + self._pause_s
        self._down_because = because
        self._pause_s = min(self._pause_s * 2, OUTAGE_PAUSES_S[1])

    async def close(self) -> None:
        """Close the kept-alive connections (after the pool has stopped)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def http_client(timeout: float) -> Client:
    """The runners' HTTP client: keep-alive, ``timeout`` seconds for a request from start to last byte.

    No limit on connections (the pool's concurrency bounds the requests in flight); no cookie store
    (reqwest's default: what an app set in one answer must not go with the next job's request); no
    redirects followed (the app is the one at the URL); no proxy taken from the environment (the app is
    usually beside the worker, and ``HTTP_PROXY`` is meant for other programs than this one).
    """
    return (
        ClientBuilder()
        .timeout(timedelta(seconds=timeout))
        .follow_redirects(False)
        .no_proxy()
        .pool_idle_timeout(timedelta(seconds=KEEPALIVE_S))
        .build()
    )


def _post(url: Url) -> str:
    return f"POST {redact_url(str(url))}"


def _reason(exc: PyreqwestError) -> str:
    """What went wrong, from the causes pyreqwest lists: ``tcp connect error: Connection refused``.

    Its first causes restate the request with the URL unredacted, and say "client error": left out."""
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    said = [str(cause.get("message", "")) for cause in causes or () if isinstance(cause, dict)]
    said = [m for m in said if m and not m.startswith(("error sending request", "client error ("))]
    return ": ".join(said) or type(exc).__name__


async def _read_bounded(response: Response) -> bytes:
    # Read to the end, so the connection can be reused, but keep only the first KEEP_BYTES.
    length = response.get_header("Content-Length")
    if length is not None and length.isdigit() and int(length) <= KEEP_BYTES:
        return bytes(await response.bytes())  # the common case: a short answer of a known length
    kept = bytearray()
    reader = response.body_reader
    while (chunk := await reader.read_chunk()) is not None:
        if len(kept) < KEEP_BYTES:
            kept += memoryview(chunk)[: KEEP_BYTES - len(kept)]
    return bytes(kept)
