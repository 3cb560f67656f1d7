"""A small client of RabbitMQ's management HTTP API, for ``event queues`` and ``event topology --check``."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from event.config import split_urls
from event.errors import ConnectionFailed

DEFAULT_PORT = 15672
# Where the API is when it is not beside the AMQP port's host on 15672: ours first, then the name RabbitMQ's
# own tooling and our test suite use.
URL_VARIABLES = ("EVENT_MANAGEMENT_URL", "RABBITMQ_MANAGEMENT_URL")


def configured_base(option: str | None, environ: Mapping[str, str]) -> str | None:
    """The API's address given by ``--management-url``, else by the first of :data:`URL_VARIABLES` set.

    None means "derive it from the AMQP URL" (:meth:`ManagementApi.for_url`).
    """
    if option:
        return option
    for name in URL_VARIABLES:
        if environ.get(name):
            return environ[name]
    return None


@dataclass(frozen=True)
class ManagementApi:
    """The management API of the broker an AMQP URL points at (same host, user and vhost)."""

    base: str
    user: str
    password: str
    vhost: str

    @classmethod
    def for_url(cls, amqp_url: str, base: str | None = None) -> ManagementApi:
        """Derive the API's address and credentials from ``amqp_url`` (``base`` overrides the address)."""
        parts = urllib.parse.urlsplit(split_urls(amqp_url)[0])
        vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        scheme = "https" if parts.scheme == "amqps" else "http"
        address = base or f"{scheme}://{parts.hostname or '127.0.0.1'}:{DEFAULT_PORT}"
        return cls(address.rstrip("/"), parts.username or "guest", parts.password or "guest", vhost)

    async def get(self, path: str) -> Any:
        """GET ``path`` (under ``/api``), decoded; :class:`ConnectionFailed` when the API does not answer."""
        return await asyncio.to_thread(self._get, path)

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.base + "/api" + path)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ConnectionFailed(
                f"the management API at {self.base} answered {exc.code} for {path}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionFailed(
                f"the management API does not answer at {self.base} ({exc}): enable it with "
                f"`rabbitmq-plugins enable rabbitmq_management`, or give its address with --management-url "
                f"or ${URL_VARIABLES[0]}"
            ) from exc

    @property
    def quoted_vhost(self) -> str:
        """The vhost as it goes into an API path."""
        return urllib.parse.quote(self.vhost, safe="")

    async def queues(self) -> list[dict[str, Any]]:
        """Every queue of the vhost with its statistics."""
        found: list[dict[str, Any]] = await self.get(f"/queues/{self.quoted_vhost}") or []
        return found

    async def queue(self, name: str) -> dict[str, Any] | None:
        """One queue, or None when it does not exist."""
        found: dict[str, Any] | None = await self.get(
            f"/queues/{self.quoted_vhost}/{urllib.parse.quote(name, safe='')}"
        )
        return found

    async def bindings(self, name: str) -> list[dict[str, Any]]:
        """The bindings of a queue."""
        path = f"/queues/{self.quoted_vhost}/{urllib.parse.quote(name, safe='')}/bindings"
        found: list[dict[str, Any]] = await self.get(path) or []
        return found

    async def exchange(self, name: str) -> dict[str, Any] | None:
        """One exchange, or None when it does not exist."""
        path = f"/exchanges/{self.quoted_vhost}/{urllib.parse.quote(name, safe='')}"
        found: dict[str, Any] | None = await self.get(path)
        return found

    async def bindings_from(self, exchange: str) -> list[dict[str, Any]]:
        """The bindings whose source is ``exchange`` (empty when it does not exist)."""
        path = f"/exchanges/{self.quoted_vhost}/{urllib.parse.quote(exchange, safe='')}/bindings/source"
        found: list[dict[str, Any]] = await self.get(path) or []
        return found
