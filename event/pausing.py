"""Pausing a pool's consumers: which queues are paused, and the basic.cancel / basic.consume behind it.

A paused consumer keeps its channel (so the handlers already running still ack on it) but has no
broker-side consumer, so the broker hands its messages to the other workers, or keeps them. Messages
that arrived before the broker's Cancel-Ok are handled as usual. Resuming consumes again with the same
consumer tag, so the pool's shutdown cancels the right one whichever state a queue is in.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

from event.connect import Channel
from event.control import Command
from event.driver import OnCancel, OnDelivery
from event.errors import ConfigurationError

log = logging.getLogger(__name__)


@dataclass
class _PausableConsume:
    channel: Channel
    tag: str
    on_delivery: OnDelivery
    on_cancel: OnCancel
    consuming: bool = False


class PauseSwitch:
    """The paused state of a pool's consumer queues, kept across reconnects."""

    def __init__(self, queues: Callable[[], Collection[str]]) -> None:
        self._queues = queues  # the pool's consumer queue names, read when a command names one
        self._paused: set[str] = set()
        self._live: dict[str, _PausableConsume] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def paused(self) -> frozenset[str]:
        """The queues paused now."""
        return frozenset(self._paused)

    def is_paused(self, queue: str) -> bool:
        """Whether ``queue`` is paused."""
        return queue in self._paused

    async def consume(
        self, channel: Channel, queue: str, on_delivery: OnDelivery, on_cancel: OnCancel
    ) -> str:
        """Start consuming ``queue`` on ``channel`` (unless it is paused); returns the consumer tag."""
        self._closed = False
        tag = f"event.{uuid.uuid4().hex}"  # not the queue's name: a tag is at most 255 bytes too
        async with self._lock:
            consumer = _PausableConsume(channel, tag, on_delivery, on_cancel)
            self._live[queue] = consumer
            if queue not in self._paused:
                await self._consume(queue, consumer)
        return tag

    async def _consume(self, queue: str, consumer: _PausableConsume) -> None:
        await consumer.channel.basic_consume(
            queue, consumer.on_delivery, consumer_tag=consumer.tag, on_cancel=consumer.on_cancel
        )
        consumer.consuming = True

    def close(self) -> None:
        """No more consuming (the pool shuts down): a resume now only records the state."""
        self._closed = True

    async def apply(self, command: Command) -> None:
        """Carry out a control command; a queue this pool does not consume is not its business."""
        if command.queue not in self._queues():
            return
        if command.action == "pause":
            await self.pause(command.queue)
        else:
            await self.resume(command.queue)

    async def pause(self, queue: str) -> None:
        """Stop taking messages from ``queue``; running handlers finish and ack as usual."""
        self._check(queue)
        async with self._lock:
            if queue in self._paused:
                return
            self._paused.add(queue)
            consumer = self._live.get(queue)
            if consumer is not None and consumer.consuming and not consumer.channel.is_closed:
                consumer.consuming = False
                await consumer.channel.basic_cancel(consumer.tag)
        log.info("paused the consumer of %s", queue)

    async def resume(self, queue: str) -> None:
        """Take messages from ``queue`` again."""
        self._check(queue)
        async with self._lock:
            if queue not in self._paused:
                return
            self._paused.discard(queue)
            consumer = self._live.get(queue)
            if (
                consumer is not None
                and not consumer.consuming
                and not self._closed
                and not consumer.channel.is_closed
            ):
                await self._consume(queue, consumer)
        log.info("resumed the consumer of %s", queue)

    def _check(self, queue: str) -> None:
        if queue not in self._queues():
            raise ConfigurationError(
                f"this pool has no consumer queue {queue!r}; its queues are {sorted(self._queues())}"
            )
