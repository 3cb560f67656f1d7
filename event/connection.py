"""Opening AMQP connections and channels, with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import asyncio
import random
import ssl
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiormq
import aiormq.abc
from aiormq import exceptions as amqp_errors

from event import frames
from event.config import redact_url, split_urls
from event.errors import ConnectionFailed

Connection = aiormq.abc.AbstractConnection
Channel = aiormq.abc.AbstractChannel


class Connector(Protocol):
    """How a pool, publisher or tool opens its connection (``connect`` below, or a test broker's)."""

    async def __call__(self, url: str, *, name: str) -> Connection: ...


HOW_TO_GET_A_BROKER = (
    "start one locally with `rabbitmq-server -detached` (Debian: `apt-get install rabbitmq-server`), "
    "or point AMQP_URL at a running broker"
)


async def connect(url: str, *, name: str, timeout: float = 10.0, start: int | None = None) -> Connection:
    """Open a connection to ``url``, raising :class:`ConnectionFailed` with a readable reason.

    For a comma-separated list of nodes every call starts at a random one (``start`` picks it, for
    tests), so that workers spread over a cluster, and tries the others in turn until one answers:
    a reconnect after a node's death reaches a live node within one pass over the list.
    """
    urls = split_urls(url)
    first = random.randrange(len(urls)) if start is None else start % len(urls)
    failures: list[ConnectionFailed] = []
    for one in rotated(urls, first):
        try:
            return await _connect_one(one, name=name, timeout=timeout)
        except ConnectionFailed as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    raise ConnectionFailed("no broker of the list answered: " + "; ".join(map(str, failures))) from failures[
        -1
    ]


def rotated(urls: list[str], first: int) -> list[str]:
    """``urls`` starting at index ``first`` and wrapping round: the order in which nodes are tried."""
    return urls[first:] + urls[:first]


def connected_url(connection: Connection) -> str:
    """The node ``connection`` reached, password hidden (for logs naming the node of a cluster)."""
    return redact_url(str(getattr(connection, "url", "") or "?"))


async def _connect_one(url: str, *, name: str, timeout: float) -> Connection:
    shown = redact_url(url)
    try:
        async with asyncio.timeout(timeout):
            frames.install()
            connection: Connection = await aiormq.connect(
                url,
                client_properties={"connection_name": name, "product": "event (Python)"},
                transport_factory=frames.transport_factory,
            )
            return connection
    except amqp_errors.ProbableAuthenticationError as exc:
        raise ConnectionFailed(
            f"RabbitMQ at {shown} refused the login ({exc}): check the user and password in the URL"
        ) from exc
    except amqp_errors.AuthenticationError as exc:
        raise ConnectionFailed(f"RabbitMQ at {shown} refused the login mechanism: {exc}") from exc
    except TimeoutError as exc:
        raise ConnectionFailed(
            f"RabbitMQ at {shown} did not answer within {timeout:g} s; {HOW_TO_GET_A_BROKER}"
        ) from exc
    except (amqp_errors.AMQPError, OSError) as exc:
        reason = _close_reason(exc)
        if isinstance(exc, amqp_errors.InvalidFrameError) and "Connection.Close" in str(exc):
            # aiormq drops the broker's reply text here; at this step the only refusal is of the vhost.
            vhost = unquote(urlsplit(url).path[1:]) or "/"
            raise ConnectionFailed(
                f"RabbitMQ at {shown} refused vhost {vhost!r}: it does not exist or the user may not use "
                f"it. Create it with `rabbitmqctl add_vhost {vhost}` and grant access with "
                f"`rabbitmqctl set_permissions -p {vhost} USER '.*' '.*' '.*'`, or fix the URL"
            ) from exc
        if _caused_by(exc, ssl.SSLError):
            raise ConnectionFailed(
                f"the TLS handshake with RabbitMQ at {shown} failed ({reason or exc}): check that the port "
                "is the broker's TLS listener (5671 by default) and the cafile, certfile and keyfile "
                "options of the URL"
            ) from exc
        raise ConnectionFailed(
            f"cannot reach RabbitMQ at {shown} ({reason or exc}); {HOW_TO_GET_A_BROKER}"
        ) from exc


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _close_reason(exc: BaseException) -> str | None:
    """The broker's own words from a Connection.Close frame hidden in an aiormq error, if any."""
    for arg in exc.args:
        text = getattr(arg, "reply_text", None)
        if isinstance(text, str):
            return text
    return str(exc) if exc.args else None


async def open_channel(connection: Connection, *, confirms: bool, prefetch: int | None = None) -> Channel:
    """A new channel; ``confirms`` turns on publisher confirms, ``prefetch`` sets its QoS."""
    try:
        channel: Channel = await connection.channel(publisher_confirms=confirms)
        if prefetch is not None:
            await channel.basic_qos(prefetch_count=prefetch)
    except (amqp_errors.AMQPError, RuntimeError, ConnectionError) as exc:
        raise ConnectionFailed(f"could not open a channel: {exc}") from exc
    return channel


async def close_quietly(thing: Any) -> None:
    """Close a channel or connection, ignoring that it may already be gone."""
    if thing is None or thing.is_closed:
        return
    try:
        async with asyncio.timeout(5):
            await thing.close()
    except Exception:  # best effort at shutdown: the broker cleans up after a dead connection anyway
        pass
