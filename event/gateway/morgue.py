"""The dead queue as the dashboard browses it: a snapshot read only when the queue changed, searched
and paged in memory, newest first.

RabbitMQ cannot show a queue's messages without delivering them: each read hands every message out and
back, and the broker counts one redelivery per message. So the gateway reads the dead queue into a
snapshot (:meth:`event.dead.DeadQueue.read_all`) and reads it again only when its fingerprint changed:
the message count (a passive declare, which delivers nothing) and the management API's count of
messages published into it. However many tabs are open and for however long, an unchanged dead queue
is read once; a changing one at most once every ``min_reread_s``, and only once its count settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from event import wire
from event.dead import DeadMessage, DeadQueue

Fingerprint = tuple[int, int | None]

log = logging.getLogger(__name__)


def dead_key(message: DeadMessage) -> str:
    """What names one dead message in the API: its message id, or a digest of it when it has none."""
    if message.message_id:
        return message.message_id
    digest = hashlib.sha256()
    digest.update(message.routing_key.encode())
    digest.update(str(message.failed_at).encode())
    digest.update(message.body)
    return "sha256:" + digest.hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead messages to show or act on; every field given must hold.

    ``routing_key``: a topic pattern when it has ``*`` or ``#``, else a part of the key; ``queue`` and
    ``error``: a part of the failing queue's name or of the error text (case ignored); ``since`` and
    ``until``: bounds of the time it failed.
    """

    routing_key: str | None = None
    queue: str | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        """Whether it lets every message through."""
        return not (self.routing_key or self.queue or self.error or self.since or self.until)

    def __call__(self, message: DeadMessage) -> bool:
        if self.routing_key:
            if "*" in self.routing_key or "#" in self.routing_key:
                if not wire.topic_matches(self.routing_key, message.routing_key):
                    return False
            elif self.routing_key.lower() not in message.routing_key.lower():
                return False
        if self.queue and self.queue.lower() not in (message.queue or "").lower():
            return False
        if self.error and self.error.lower() not in (message.error or "").lower():
            return False
        if self.since is not None and (message.failed_at is None or message.failed_at < self.since):
            return False
        return not (self.until is not None and (message.failed_at is None or message.failed_at > self.until))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The dead queue as last read: newest first."""

    messages: tuple[DeadMessage, ...]
    read_at: float  # epoch seconds
    fingerprint: Fingerprint
    by_key: dict[str, DeadMessage] = field(repr=False)

    def matching(self, where: DeadFilter) -> list[DeadMessage]:
        """The messages ``where`` lets through, newest first."""
        return list(self.messages) if where.empty else [m for m in self.messages if where(m)]


class Morgue:
    """Snapshots of one dead queue, re-read only when it changed (see the module's text).

    The first look waits for the first read; later ones get the snapshot at once, and a change seen
    twice in a row (the queue's count settled: RabbitMQ takes its time putting back what a requeue
    handed back) starts a read in the background, at most one every ``min_reread_s``.
    """

    def __init__(
        self,
        open_dead: Callable[[], DeadQueue],
        fingerprint: Callable[[], Awaitable[Fingerprint | None]],
        *,
        min_reread_s: float = 10.0,
    ) -> None:
        self.open_dead = open_dead
        self.fingerprint = fingerprint  # None: there is no dead queue
        self.min_reread_s = min_reread_s
        self.reads = 0  # full reads so far: each redelivered every message of the queue once
        self._snapshot: Snapshot | None = None
        self._last_seen: Fingerprint | None = None
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop a read under way (its messages go back to the queue with its channel)."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refreshing

    @contextlib.asynccontextmanager
    async def changing(self) -> AsyncIterator[None]:
        """Hold reads off while the caller requeues or deletes dead messages. A read hands every message
        of the queue out and back, so an action run meanwhile would find them gone (it deleted or
        requeued none of them, and said so)."""
        async with self._lock:
            yield

    def forget(self, where: Callable[[DeadMessage], bool]) -> None:
        """Drop the messages ``where`` selects from the snapshot: this gateway requeued or deleted them
        (the next read, once the queue settled, confirms it)."""
        old = self._snapshot
        if old is not None:
            kept = tuple(m for m in old.messages if not where(m))
            self._snapshot = Snapshot(kept, old.read_at, old.fingerprint, {dead_key(m): m for m in kept})

    async def snapshot(self) -> Snapshot | None:
        """The dead queue as last read (the first time: now); None when there is no dead queue."""
        now = await self.fingerprint()
        if now is None:
            self._snapshot = self._last_seen = None
            return None
        if self._snapshot is None:
            async with self._lock:  # one read for every tab that asks meanwhile
                if self._snapshot is None:
                    await self._read(now)
        else:
            old = self._snapshot
            settled = now == self._last_seen
            due = time.time() - old.read_at >= self.min_reread_s
            idle = self._refreshing is None or self._refreshing.done()
            if now != old.fingerprint and settled and due and idle:
                self._refreshing = asyncio.get_running_loop().create_task(self._refresh(now))
        self._last_seen = now
        return self._snapshot

    async def _refresh(self, now: Fingerprint) -> None:
        async with self._lock:
            try:
                await self._read(now)
            except Exception as exc:  # the broker went away meanwhile: the next look tries again
                log.warning("reading the dead queue failed: %s", exc)

    async def _read(self, now: Fingerprint) -> None:
        async with self.open_dead() as dead:
            read = await dead.read_all()
        self.reads += 1
        newest_first: tuple[DeadMessage, ...] = tuple(reversed(read))
        self._snapshot = Snapshot(newest_first, time.time(), now, {dead_key(m): m for m in newest_first})
