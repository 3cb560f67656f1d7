"""Keeping one consumer consuming: its channel, its consume, and its comeback when the broker ends it.

The broker can end a consumer while the connection lives on: with a ``Basic.Cancel`` (its queue was
deleted, a quorum queue's leader moved, RabbitMQ 4.x's delivery timeout) or by closing its channel
(``PRECONDITION_FAILED`` when a handler outlives ``consumer_timeout``, ``NOT_FOUND``). The driver
reports the first to the consume's ``on_cancel`` and the second through the channel's ``closing``
future; a :class:`ConsumerSupervisor` listens to both. It then abandons the channel's
delivery tags (they die with it: the broker redelivers those messages), says why in one error line,
re-declares the consumer's queue and bindings and consumes again on a fresh channel, with back-off,
never touching the pool's other consumers. While it is not consuming the pool is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from event import driver, topology
from event.acks import AckTracker, tracker_for
from event.connect import (
    Channel,
    Connection,
    broker_reason,
    close_quietly,
    connected_url,
    open_channel,
)
from event.dispatch import Dispatcher
from event.errors import ConnectionFailed, EventError
from event.pacing import COMEBACK_DELAYS_S, delay_before

log = logging.getLogger(__name__)


# Starts consuming a queue on a channel with a delivery and a cancel callback; returns the consumer tag.
Consume = Callable[[Channel, str, driver.OnDelivery, driver.OnCancel], Awaitable[str]]


async def _basic_consume(
    channel: Channel, queue: str, on_delivery: driver.OnDelivery, on_cancel: driver.OnCancel
) -> str:
    return await channel.basic_consume(queue, on_delivery, on_cancel=on_cancel)


class ConsumerSupervisor:
    """One consumer's channel and consume, and its comeback after the broker cancelled or closed it.

    ``plan`` holds what the consumer needs declared (its queue with its bindings, and the exchanges they
    refer to), taken from the pool's own plan. ``on_change`` is called whenever :attr:`consuming` flips,
    so that the pool can recompute its readiness.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        plan: topology.Plan,
        *,
        ack_interval: float,
        on_change: Callable[[], None],
        delays: Sequence[float] = COMEBACK_DELAYS_S,
        consume: Consume | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.queue = dispatcher.consumer.queue
        self.plan = plan
        self.ack_interval = ack_interval
        self.on_change = on_change
        self.delays = delays
        self.consume = consume or _basic_consume  # the pool's pause switch, which may hold a paused one
        self.problem: str | None = None  # why it is not consuming, when it is not
        self._channel: Channel | None = None
        self._consumer_tag: str | None = None
        self._acks: AckTracker | None = None
        self._lost: asyncio.Future[str] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def consuming(self) -> bool:
        """Whether the broker is delivering this consumer's queue to us right now."""
        return self._lost is not None and not self._lost.done()

    async def start(self, connection: Connection) -> None:
        """One attempt: a fresh channel, the consumer's queue and bindings declared, the consume sent.

        Raises :class:`ConfigurationError` (its queue exists with other arguments) or
        :class:`ConnectionFailed` (anything that may pass), naming the queue.
        """
        consumer = self.dispatcher.consumer
        channel = await open_channel(connection, confirms=False, prefetch=consumer.prefetch)
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        try:
            await topology.declare(channel, self.plan)

            acks = tracker_for(channel, prefetch=consumer.prefetch, interval=self.ack_interval)

            def cancelled(consumer_tag: str) -> None:
                if not lost.done():
                    lost.set_result(
                        f"the broker cancelled consumer {consumer_tag} (Basic.Cancel: the queue was "
                        "deleted, its node or quorum leader went away, or a delivery timed out)"
                    )

            channel.closing.add_done_callback(lambda done: _closed(done, lost))
            self.dispatcher.attach(acks)
            tag = await self.consume(channel, consumer.queue, self.dispatcher.on_delivery, cancelled)
        except EventError:
            await close_quietly(channel)
            raise
        except (driver.AMQPError, ConnectionError) as exc:
            await close_quietly(channel)
            raise ConnectionFailed(
                f"could not consume from queue {self.queue!r}: {broker_reason(exc)}"
            ) from exc
        except BaseException:
            await close_quietly(channel)
            raise
        self._channel, self._acks, self._lost = channel, acks, lost
        self._consumer_tag = tag
        self.problem = None
        self.dispatcher.stats.consuming = True
        lost.add_done_callback(self._stopped)  # readiness drops at once, before the watch wakes up
        self.on_change()

    def _stopped(self, _: asyncio.Future[str]) -> None:
        self.dispatcher.stats.consuming = False
        self.on_change()

    def watch(self, connection: Connection) -> None:
        """Keep the consumer consuming on ``connection`` in a task of its own, until :meth:`forget`.

        Not consuming yet (after a reconnect, or a first start the broker refused), it starts at once.
        """
        self._task = asyncio.get_running_loop().create_task(self._watch(connection))

    async def _watch(self, connection: Connection) -> None:
        attempt = -1 if self.consuming else 0  # -1: consuming already, wait for its end
        while True:
            if attempt >= 0:
                await asyncio.sleep(delay_before(attempt, self.delays))
                if connection.is_closed:
                    return  # the pool reconnects and starts another watch
                try:
                    await self.start(connection)
                except EventError as exc:
                    if connection.is_closed:
                        return
                    self.problem = str(exc)
                    log.error(
                        "consumer of queue %r at %s cannot consume again (attempt %d, next in %g s): %s",
                        self.queue,
                        connected_url(connection),
                        attempt + 1,
                        delay_before(attempt + 1, self.delays),
                        exc,
                    )
                    attempt += 1
                    continue
                except Exception as exc:  # a bug, not the broker: say so, and keep trying all the same
                    self.problem = repr(exc)
                    log.error(
                        "consumer of queue %r: attempt %d failed", self.queue, attempt + 1, exc_info=True
                    )
                    attempt += 1
                    continue
                if attempt > 0:
                    log.info("consumer of queue %r consumes again after %d attempts", self.queue, attempt + 1)
            lost = self._lost
            assert lost is not None
            reason = await asyncio.shield(lost)
            await asyncio.sleep(0)  # a connection closing closes its channels first: let it show
            if connection.is_closed:
                return
            log.error(
                "consumer of queue %r at %s stopped: %s; declaring its queue again and consuming on a "
                "new channel",
                self.queue,
                connected_url(connection),
                reason,
            )
            self.problem = reason
            self.dispatcher.stats.restarts += 1
            await self._drop()
            attempt = 0

    async def _drop(self) -> None:
        # Delivery tags belong to their channel: none of them may be acked on any other. The channel is
        # closed before a new tracker is attached, so no late delivery of it can reach the new one; its
        # unacked messages go back to the queue.
        acks, channel = self._acks, self._channel
        self._acks = self._channel = None
        self._consumer_tag = None
        if acks is not None:
            acks.abandon()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result("the connection was lost")
        await close_quietly(channel)

    async def forget(self) -> None:
        """The connection is gone: stop watching and abandon the channel's tags."""
        await self._stop_watching()
        await self._drop()

    async def _stop_watching(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def cancel(self) -> None:
        """At shutdown: stop watching and ask the broker for no more deliveries (in-flight work goes on)."""
        await self._stop_watching()
        channel, tag = self._channel, self._consumer_tag
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.basic_cancel(tag)

    async def close(self) -> None:
        """At shutdown, after the drain: send the last acks and close the channel."""
        acks, channel = self._acks, self._channel
        if acks is not None:
            acks.close()
        self._acks = self._channel = None
        self._consumer_tag = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result("the pool stopped")
        await close_quietly(channel)


def _closed(done: asyncio.Future[Any], lost: asyncio.Future[str]) -> None:
    reason = "the channel was closed"
    if done.cancelled():
        pass
    elif (exc := done.exception()) is not None:
        reason = f"the broker closed its channel: {broker_reason(exc)}"
    if not lost.done():
        lost.set_result(reason)
