"""Batch consumers: messages gathered into lists, one handler call for each list.

A consumer declared with ``batch=N, batch_wait=S`` gets ``list[Message[T]]`` of up to ``N`` messages,
gathered for at most ``S`` seconds after the first one of the list arrived. Each message is first taken
as a single one would be (its headers read, its body decoded and typed; a bad body goes to the dead
queue alone) and only then joins a batch: :class:`Batcher` holds what is gathered and starts the run of
each full (or timed-out) list in a task of its own, at most ``limit`` at once.

How a batch ends is the dispatcher's (:mod:`event.dispatch`): success acks every message, an exception
fails each one through the usual retry rules, and :class:`BatchFailed` names the ones that failed, so
that only those are retried and the others acked (:class:`event.signals.BatchFailed`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

DEFAULT_BATCH_WAIT_S = 0.2


class Batcher(Generic[T]):
    """Gathers items into lists of ``size`` or ``wait`` seconds, whichever comes first, and runs each.

    ``run(items)`` is started in a task for each list; at most ``limit`` run at once (0: no limit),
    the next full list waiting for one to end. ``accepting()`` false at a flush: the list is dropped
    unrun (its messages stay unacked, and the broker hands them back when the channel closes); ``run``
    itself asks again once it has a slot."""

    def __init__(
        self,
        run: Callable[[list[T]], Coroutine[Any, Any, None]],
        *,
        size: int,
        wait: float,
        limit: int,
        accepting: Callable[[], bool],
    ) -> None:
        self._run = run
        self.size = size
        self.wait = wait
        self._accepting = accepting
        self._slots = asyncio.Semaphore(limit) if limit else None
        self._gathering: list[T] = []
        self._timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.running = 0  # items in batches started and not yet ended

    @property
    def in_hand(self) -> int:
        """Items gathered or running."""
        return len(self._gathering) + self.running

    def add(self, item: T) -> None:
        """Gather ``item``; the list goes when it is full or ``wait`` after its first item."""
        gathering = self._gathering
        gathering.append(item)
        if len(gathering) >= self.size:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait, self.flush)

    def flush(self) -> None:
        """Start the list gathered so far (if any)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._gathering = self._gathering, []
        if not items or not self._accepting():
            return
        self.running += len(items)
        task = asyncio.get_running_loop().create_task(self._limited(items))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _limited(self, items: list[T]) -> None:
        try:
            if self._slots is None:
                await self._run(items)
            else:
                async with self._slots:
                    await self._run(items)
        finally:
            self.running -= len(items)
