"""Polling each consumer queue's ready messages for the autoscaling signal (see :mod:`event.drain`).

A passive ``queue.declare`` per queue every ``interval`` seconds, on a channel of the poller's own; a queue
the broker cannot answer for is reported as not known until it answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from event import driver
from event.connect import Channel, Connection, close_quietly, open_channel
from event.drain import DEFAULT_INTERVAL_S, QueueDepth
from event.errors import EventError

# What one poller watches: the queue's name, its QueueDepth, and this worker's running count of settled
# deliveries of it.
Watched = tuple[str, QueueDepth, Callable[[], int]]


async def poll(
    connection: Connection,
    watched: Sequence[Watched],
    *,
    interval: float = DEFAULT_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Sample every watched queue's depth and settled count each ``interval`` s while ``connection`` lives."""
    channel: Channel | None = None
    try:
        while not connection.is_closed:
            for queue, depth, settled in watched:
                depth.rate.sample(clock(), settled())
                try:
                    if channel is None or channel.is_closed:  # a NOT_FOUND closed the last one
                        channel = await open_channel(connection, confirms=False)
                    depth.ready = (await channel.queue_declare(queue, passive=True)).message_count
                except (EventError, driver.AMQPError, ConnectionError):
                    depth.ready = None
            await asyncio.sleep(interval)
    finally:
        await close_quietly(channel)
