"""Settings and their validation: every bad value fails early, with the setting named."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from event.errors import ConfigurationError

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_EXCHANGE = "hutch"
DEFAULT_PREFETCH = 50
DEFAULT_CONCURRENCY = 200
DEFAULT_GRACE_S = 30.0
DEFAULT_PUBLISH_TIMEOUT_S = 30.0
DEFAULT_THREADS = 32


def resolve_url(url: str | Sequence[str] | None) -> str:
    """The broker URL to use: ``url`` if given, else ``$AMQP_URL``, else the local broker.

    Several URLs (the nodes of a cluster) are given as a list or separated by commas; they are tried
    in turn on every connect and reconnect. The result keeps them comma-separated.
    """
    if url is not None and not isinstance(url, str):
        url = ",".join(url)
    chosen = url or os.environ.get("AMQP_URL") or DEFAULT_URL
    for one in split_urls(chosen):
        if urlsplit(one).scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"broker URL {redact_url(one)!r} must start with amqp:// or amqps://")
    return chosen


def split_urls(url: str) -> list[str]:
    """The URLs of a comma-separated list (a single URL gives a list of one)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and error messages."""
    if "," in url:
        return ",".join(redact_url(part) for part in split_urls(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_count(name: str, value: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` if it is a whole number within bounds, else a :class:`ConfigurationError` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigurationError(f"{name} must be at least {minimum}{upper}, not {value}")
    return value


def check_seconds(name: str, value: float, *, allow_zero: bool = True) -> float:
    """``value`` if it is a finite, non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(
            f"{name} must be {'at least' if allow_zero else 'more than'} 0 s, not {value}"
        )
    return float(value)


def check_name(name: str, value: str) -> str:
    """``value`` if it is a usable AMQP name (exchange or queue): a short string without white space."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, not {value!r}")
    if len(value.encode()) > 255 or any(ch.isspace() for ch in value):
        raise ConfigurationError(f"{name} {value!r} must be at most 255 bytes and contain no white space")
    if value.startswith("amq."):
        raise ConfigurationError(f"{name} {value!r}: names starting with 'amq.' are reserved by the broker")
    return value


# The x-queue-type values a consumer or pool may ask for (Hutch's queue options map to these, spec section 2).
QUEUE_TYPES = ("classic", "quorum")


def check_queue_type(queue_type: str | None) -> str | None:
    """``queue_type`` if it is None (the broker's default), ``"classic"`` or ``"quorum"``."""
    if queue_type is not None and queue_type not in QUEUE_TYPES:
        raise ConfigurationError(f"queue_type must be 'classic' or 'quorum', not {queue_type!r}")
    return queue_type
