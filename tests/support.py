"""Helpers for the integration tests: the broker under test, its management API, and isolation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"

HOW_TO_GET_A_BROKER = (
    "Integration tests need a RabbitMQ broker. Start one with `rabbitmq-server -detached` "
    "(Debian: `apt-get install rabbitmq-server`), or set AMQP_URL to a running broker; "
    "with a Docker engine available, unset AMQP_URL and the tests start one with testcontainers."
)


VECTORS = Path(__file__).resolve().parent / "vectors.json"
"""The project's copy of the wire format's test vectors: the suite needs nothing outside the repository."""


def shared_spec_dir() -> Path | None:
    """The shared spec the copy comes from, if there is one: $EVENT_SPEC_DIR, else ../shared/spec."""
    configured = os.environ.get("EVENT_SPEC_DIR")
    here = Path(__file__).resolve().parent.parent
    candidates = [Path(configured)] if configured else [here.parent / "shared" / "spec"]
    for candidate in candidates:
        if (candidate / "vectors.json").is_file():
            return candidate
    return None


def examples(full: int) -> int:
    """A property test's hypothesis examples: ``full``, the strength it is written with and runs with
    locally and in CI's first pass; a share of it when $EVENT_TEST_EXAMPLES_SHARE says so (CI's passes
    that run tests/unit again, under other Pythons: the same derandomized or random properties, fewer
    times), never below hypothesis's own default of 100."""
    share = float(os.environ.get("EVENT_TEST_EXAMPLES_SHARE") or 1)
    return full if share >= 1 else max(min(full, 100), round(full * share))


def vectors() -> dict[str, Any]:
    """The wire format's test vectors (tests/vectors.json)."""
    loaded: dict[str, Any] = json.loads(VECTORS.read_text())
    return loaded


def rabbitmqctl_command(amqp_url: str) -> list[str]:
    """The ``rabbitmqctl`` of the broker under test: ``$RABBITMQCTL`` (a command prefix), else the local one.

    A broker on another port than 5672 is not the one plain ``rabbitmqctl`` reaches: without
    ``$RABBITMQCTL`` the fault tests would stop, cut and alarm the machine's own broker instead.
    """
    configured = os.environ.get("RABBITMQCTL")
    if configured:
        return shlex.split(configured)
    if (urllib.parse.urlsplit(amqp_url).port or 5672) != 5672:
        raise RuntimeError(
            f"the broker under test ({amqp_url}) is not the local default one: set RABBITMQCTL to the "
            'command that reaches it (for cmd/rabbitmq-4.3: `eval "$(cmd/rabbitmq-4.3 env)"`)'
        )
    return ["rabbitmqctl"]


ENABLE_MANAGEMENT = "rabbitmq-plugins enable rabbitmq_management"


def management_ready(amqp_url: str, *, wait: float = 60.0) -> str | None:
    """Make the management API of the broker under test answer: None if it does, else the line to show.

    When it does not and the broker is the machine's own (local, port 5672, no $RABBITMQCTL pointing
    elsewhere) and ``rabbitmq-plugins`` is at hand, the plugin is enabled, as .ci/run does, and the API
    waited for. Otherwise, or if that fails, the line names the command to run.
    """
    api = Management.for_amqp_url(amqp_url)
    if api.answers():
        return None
    parts = urllib.parse.urlsplit(amqp_url)
    ours = (
        parts.hostname in ("127.0.0.1", "localhost", "::1")
        and (parts.port or 5672) == 5672
        and "RABBITMQ_MANAGEMENT_URL" not in os.environ
        and not os.environ.get("RABBITMQCTL")
    )
    plugins = shutil.which("rabbitmq-plugins")
    if ours and plugins is not None:
        try:
            enabled = subprocess.run(
                [plugins, "enable", "rabbitmq_management"], capture_output=True, text=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not enable RabbitMQ's management plugin ({exc}): run `{ENABLE_MANAGEMENT}`"
        if enabled.returncode != 0:
            why = (enabled.stderr or enabled.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"`{ENABLE_MANAGEMENT}` failed ({why[0]}): run it as root (or as rabbitmq)"
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if api.answers():
                return None
            time.sleep(0.5)
        return f"enabled RabbitMQ's management plugin, but no API answers at {api.base} within {wait:g} s"
    return (
        f"RabbitMQ's management API does not answer at {api.base}: run `{ENABLE_MANAGEMENT}` "
        "(or set RABBITMQ_MANAGEMENT_URL to where it is)"
    )


def broker_answers(url: str, timeout: float = 3.0) -> bool:
    """Whether something accepts TCP connections at the URL's host and port."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Management:
    """A small client of RabbitMQ's management HTTP API (the tests' window onto the broker)."""

    base: str
    user: str
    password: str
    vhost: str = "/"

    @classmethod
    def for_amqp_url(cls, amqp_url: str) -> Management:
        parts = urllib.parse.urlsplit(amqp_url)
        base = os.environ.get("RABBITMQ_MANAGEMENT_URL", f"http://{parts.hostname or '127.0.0.1'}:15672")
        vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return cls(base.rstrip("/"), parts.username or "guest", parts.password or "guest", vhost)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "DELETE":
                return None
            raise
        return json.loads(raw) if raw else None

    @property
    def _v(self) -> str:
        return urllib.parse.quote(self.vhost, safe="")

    def answers(self) -> bool:
        try:
            self.request("GET", "/api/overview")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def queue(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.request(
            "GET", f"/api/queues/{self._v}/{urllib.parse.quote(name, safe='')}"
        )
        return found

    def exchange(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.request(
            "GET", f"/api/exchanges/{self._v}/{urllib.parse.quote(name, safe='')}"
        )
        return found

    def queue_names(self) -> list[str]:
        return [q["name"] for q in self.request("GET", f"/api/queues/{self._v}?columns=name")]

    def bindings_of(self, queue: str) -> list[dict[str, Any]]:
        path = f"/api/queues/{self._v}/{urllib.parse.quote(queue, safe='')}/bindings"
        found: list[dict[str, Any]] = self.request("GET", path)
        return found

    def delete_queue(self, name: str) -> None:
        self.request("DELETE", f"/api/queues/{self._v}/{urllib.parse.quote(name, safe='')}")

    def delete_exchange(self, name: str) -> None:
        self.request("DELETE", f"/api/exchanges/{self._v}/{urllib.parse.quote(name, safe='')}")

    def connections(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.request("GET", "/api/connections")
        return found

    def close_connections(self, client_name: str) -> int:
        """Close every connection whose client-given name is ``client_name``; returns how many."""
        closed = 0
        for conn in self.connections():
            if (conn.get("client_properties") or {}).get("connection_name") == client_name:
                self.request("DELETE", f"/api/connections/{urllib.parse.quote(conn['name'], safe='')}")
                closed += 1
        return closed


@dataclass
class Isolation:
    """One test's private namespace and exchange; ``cleanup`` deletes what the test declared."""

    management: Management
    namespace: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    exchange: str = ""
    extra_queues: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.exchange:
            self.exchange = f"ex-{self.namespace}"

    def cleanup(self) -> None:
        prefixes = (f"{self.namespace}:", f"{self.exchange}_")  # the latter: queues of no namespace
        for name in self.management.queue_names():
            if name.startswith(prefixes) or name in self.extra_queues:
                self.management.delete_queue(name)
        for suffix in (
            "",
            ".delay",
            ".park",
            ".unpark",
            ".schedule",
            ".control",
        ):  # .control: event.control's
            self.management.delete_exchange(f"{self.exchange}{suffix}")


@contextlib.asynccontextmanager
async def http_app(
    handler: Callable[[Any], Awaitable[Any]], path: str = "/jobs", *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """A real HTTP app (aiohttp's server) on 127.0.0.1 answering POSTs to ``path`` (over TLS with
    ``tls``); yields its port."""
    from aiohttp import web

    application = web.Application()
    application.router.add_post(path, handler)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> None:
    """Wait until ``check()`` is true; fail with the time it took otherwise."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s: {getattr(check, '__name__', check)}")
        await asyncio.sleep(interval)


class Probe:
    """A raw aiormq connection of the test's own, to look at queues and publish as other clients do."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None
        self._channel: Any = None

    async def channel(self) -> Any:
        import aiormq

        if self._channel is None or self._channel.is_closed:
            if self._connection is None or self._connection.is_closed:
                self._connection = await aiormq.connect(self.url)
            self._channel = await self._connection.channel()
        return self._channel

    async def new_channel(self, *, confirms: bool = True) -> Any:
        """Another channel on the probe's connection (for a consumer of its own, with its own QoS; without
        ``confirms``, for filling a queue fast: each publish is written, none awaits the broker)."""
        await self.channel()
        return await self._connection.channel(publisher_confirms=confirms)

    async def broker_version(self) -> tuple[int, ...]:
        """The broker's version, e.g. ``(3, 10, 8)``, as it tells every client at connection."""
        await self.channel()
        raw = self._connection.server_properties.get("version", "0")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return tuple(int(part) for part in text.split(".") if part.isdigit())

    async def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` right now (a passive declare: no management-API lag)."""
        ok = await (await self.channel()).queue_declare(queue, passive=True)
        count: int = ok.message_count
        return count

    async def take_all(self, queue: str) -> list[Any]:
        """Every message ready in ``queue``, taken off it."""
        from aiormq import spec

        channel = await self.channel()
        taken = []
        while True:
            got = await channel.basic_get(queue, no_ack=True)
            if isinstance(got.delivery, spec.Basic.GetEmpty):
                return taken
            taken.append(got)

    async def publish(self, exchange: str, routing_key: str, body: bytes, **props: Any) -> None:
        """Publish like another client would, with exactly the properties given."""
        from aiormq import spec

        await (await self.channel()).basic_publish(
            body, exchange=exchange, routing_key=routing_key, properties=spec.Basic.Properties(**props)
        )

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()


@dataclass
class Row:
    """One row of a fault table: what a counted stream sent, what the broker confirmed, what was handled.

    A duplicate is *redelivered* when one of its handlings carried the redelivered flag (the fault caught
    it in flight, before its ack reached the broker) and *republished* otherwise (the publisher sent it
    again after losing the confirm). ``lost`` counts confirmed messages never handled: it must be 0.
    """

    fault: str
    sent: int
    confirmed: int
    handled: int
    redelivered_duplicates: int
    republished_duplicates: int
    lost: int
    poison_dead: int = 0

    def line(self) -> str:
        """The row as a line of the Markdown fault table."""
        return (
            f"| {self.fault} | {self.sent} | {self.confirmed} | {self.handled} | "
            f"{self.redelivered_duplicates} + {self.republished_duplicates} | {self.lost} |\n"
        )


def tally(fault: str, sent: int, confirmed: set[int], handlings: Iterable[tuple[int, bool]]) -> Row:
    """The fault-table row of a stream: ``handlings`` are (message number, redelivered flag) pairs."""
    seen = list(handlings)
    counts = Counter(n for n, _ in seen)
    redelivered = {n for n, again in seen if again}
    duplicates = {n for n, c in counts.items() if c > 1}
    return Row(
        fault=fault,
        sent=sent,
        confirmed=len(confirmed),
        handled=len(counts),
        redelivered_duplicates=len(duplicates & redelivered),
        republished_duplicates=len(duplicates - redelivered),
        lost=len(confirmed - set(counts)),
    )


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to a report file (blocking: call it through ``asyncio.to_thread``)."""
    with path.open("a") as report:
        report.write(line)
