"""Opening AMQP connections and channels, with errors that say what is wrong and how to fix it.

A connection is one of the driver seam's (:mod:`event.driver`): each node of a URL list is opened with
:func:`event.amqp.open_connection`, our own client, unless a test broker's connector stands in for this
module.
"""

from __future__ import annotations

import asyncio
import random

from event import amqp, driver
from event.config import split_urls
from event.driver import Channel, Connection, Connector
from event.errors import ConnectionFailed


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


def broker_version(connection: Connection) -> tuple[int, ...]:
    """The broker's version, e.g. ``(4, 3, 6)``, as it said at connection; ``()`` when it did not."""
    raw = connection.server_properties.get("version", "")
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def connected_url(connection: Connection) -> str:
    """The node ``connection`` reached, password hidden (for logs naming the node of a cluster)."""
    return connection.node


def broker_reason(exc: BaseException | None) -> str:
    """The broker's own words in a driver error (``NOT_FOUND - no queue ...``), else the error itself."""
    if exc is None:
        return "the channel was closed"
    if isinstance(exc, driver.ChannelClosed | driver.ConnectionClosed):
        return exc.reply_text or str(exc)
    return str(exc) or type(exc).__name__


async def _connect_one(url: str, *, name: str, timeout: float) -> Connection:
    # The driver's ConnectionFailed already says what went wrong and how to fix it (event.amqp.reasons).
    return await amqp.open_connection(url, name=name, timeout=timeout)


async def open_channel(connection: Connection, *, confirms: bool, prefetch: int | None = None) -> Channel:
    """A new channel; ``confirms`` turns on publisher confirms, ``prefetch`` sets its QoS."""
    try:
        channel = await connection.channel(confirms=confirms)
        if prefetch is not None:
            await channel.basic_qos(prefetch)
    except (driver.AMQPError, ConnectionError) as exc:
        raise ConnectionFailed(f"could not open a channel: {broker_reason(exc)}") from exc
    return channel


async def close_quietly(thing: Channel | Connection | None) -> None:
    """Close a channel or connection, ignoring that it may already be gone."""
    if thing is None or thing.is_closed:
        return
    try:
        async with asyncio.timeout(5):
            await thing.close()
    except Exception:  # best effort at shutdown: the broker cleans up after a dead connection anyway
        pass


__all__ = [
    "Channel",
    "Connection",
    "Connector",
    "broker_reason",
    "close_quietly",
    "connect",
    "connected_url",
    "open_channel",
    "rotated",
]
