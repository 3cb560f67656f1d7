"""What an ``amqp://`` or ``amqps://`` URL asks of a connection (no I/O but reading TLS files)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from event.errors import ConfigurationError

DEFAULT_HEARTBEAT = 60


@dataclass(frozen=True, slots=True)
class Params:
    """One node's connection parameters, as read from its URL."""

    host: str
    port: int
    user: str
    password: str
    vhost: str
    heartbeat: int  # seconds we propose; 0 turns heartbeats off
    tls: bool
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an ``amqps`` URL (``None`` for ``amqp``), as aiormq builds it from the
        same query options, so URLs that worked before work the same."""
        if not self.tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cafile)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def parse(url: str) -> Params:
    """The parameters of one node's URL: scheme ``amqp`` (port 5672) or ``amqps`` (5671), user and
    password (``guest`` by default), vhost (percent-decoded, ``/`` by default), and query options
    ``heartbeat`` (seconds), ``cafile``, ``certfile``, ``keyfile`` and ``no_verify_ssl=1``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"not a usable AMQP URL ({exc})") from exc
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"an AMQP URL starts with amqp:// or amqps://, not {parts.scheme or '?'}://")
    tls = parts.scheme == "amqps"
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    heartbeat_text = query.get("heartbeat", str(DEFAULT_HEARTBEAT))
    try:
        heartbeat = int(heartbeat_text)
    except ValueError:
        heartbeat = -1
    if not 0 <= heartbeat <= 65535:
        raise ConfigurationError(
            f"heartbeat in the URL must be whole seconds (0 to 65535), not {heartbeat_text!r}"
        )
    return Params(
        host=parts.hostname or "localhost",
        port=port or (5671 if tls else 5672),
        user=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        vhost=unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
        heartbeat=heartbeat,
        tls=tls,
        cafile=query.get("cafile"),
        certfile=query.get("certfile"),
        keyfile=query.get("keyfile"),
        verify=query.get("no_verify_ssl", "0") == "0",
    )
