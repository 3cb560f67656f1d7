"""Running a stream of coroutines eagerly: no task for one that finishes without suspending.

A consumer's deliveries arrive in the driver's read loop, hundreds per read. A task per delivery costs
more than a near no-op handler itself (the task, its scheduling, a loop turn to start it). An
:class:`EagerRunner` instead takes the coroutines in arrival order in a worker task of its own and
runs each at once, with ``coro.send(None)``: most finish in that first step, and the worker goes on
to the next. One that really awaits (a publish, a full semaphore, a rate limit, I/O) keeps its worker,
continued by the task as any awaited coroutine is (:class:`_Continue` re-yields the future it waits
for and forwards what the task sends or throws), and the runner starts another worker for the items
behind it. So there are as many tasks as coroutines suspended at once, plus one.

Why a worker task rather than the first step in the read loop's callback itself (Python 3.12's
``eager_start``)? On 3.11 the callback runs outside any task, and a handler that opens
``asyncio.timeout()``, a ``TaskGroup`` or an aiohttp request before its first real await needs
:func:`asyncio.current_task`. In a worker the current task is the one that will continue the coroutine,
so a timeout cancels exactly it, and cancelling a worker (a shutdown past its grace) cancels exactly the
coroutine it runs. Each coroutine runs in a context of its own (``contextvars``), as in a task of its
own: what one handler sets is not seen by the next.

The same rule for a limit shared by several runners (a pool's concurrency): :class:`Slots` hands out a
free slot without an await, so a coroutine that finds one free does not suspend for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Continue:
    """Awaiting it continues a coroutine whose first step already ran and yielded ``waiting``.

    What ``await coro`` does from the coroutine's second step on: every step runs in the coroutine's
    own context, and the task's sends and throws (a cancel) are forwarded to it."""

    __slots__ = ("_context", "_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], context: contextvars.Context, waiting: Any) -> None:
        self._coro = coro
        self._context = context
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, run, waiting = self._coro, self._context.run, self._waiting
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancel (or anything thrown in): the coroutine decides
                try:
                    waiting = run(coro.throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = run(coro.send, sent)
                except StopIteration:
                    return


class EagerRunner(Generic[T]):
    """Runs ``start(item)`` for each submitted item, in submission order, eagerly (see the module).

    ``tasks`` are the workers alive now (a shutdown waits for them, or cancels them); ``in_hand`` counts
    the items submitted and not finished, started or not. No more than ``limit`` items run at once (0: no
    limit); the others wait in submission order, each in the queue rather than in a task of its own.
    """

    __slots__ = ("_free", "_limit", "_pending", "_running", "_start", "tasks")

    def __init__(self, start: Callable[[T], Coroutine[Any, Any, None]], *, limit: int = 0) -> None:
        self._start = start
        self._limit = limit or sys.maxsize
        self._pending: deque[T] = deque()
        self._free = 0  # workers that will take the next item (not held by a suspended coroutine)
        self._running = 0  # items started and not finished
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def in_hand(self) -> int:
        """Items submitted and not finished: waiting for a worker, or running."""
        return len(self._pending) + self._running

    def submit(self, item: T) -> None:
        """Run ``start(item)`` after the items submitted before it have started; never blocks."""
        self._pending.append(item)
        if not self._free and self._running < self._limit:
            self._spawn()

    def _spawn(self) -> None:
        self._free += 1
        task = asyncio.get_running_loop().create_task(self._work())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _work(self) -> None:
        pending = self._pending
        try:
            while pending and self._running < self._limit:
                coro = self._start(pending.popleft())
                context = contextvars.copy_context()
                self._running += 1
                try:
                    waiting = context.run(coro.send, None)
                except StopIteration:
                    self._running -= 1
                    continue
                except Exception:  # a bug in the coroutine: it is settled by nobody, say so loudly
                    self._running -= 1
                    log.exception("a delivery's processing failed")
                    continue
                except BaseException:
                    self._running -= 1
                    raise
                # It awaits something real: this worker stays with it, another takes the items behind.
                self._free -= 1
                if pending and not self._free and self._running < self._limit:
                    self._spawn()
                try:
                    await _Continue(coro, context, waiting)
                except Exception:
                    log.exception("a delivery's processing failed")
                finally:
                    self._free += 1
                    self._running -= 1
        finally:
            self._free -= 1
            # Cancelled with items left: they still get their start. (A worker that stopped at the limit
            # leaves them to the workers holding the items that run: each takes the next when done.)
            if pending and not self._free and self._running < self._limit:
                self._spawn()


class Slots:
    """A limit on how many run at once, shared (a pool's concurrency): a slot free now is taken without
    awaiting (:meth:`try_take`), so a delivery that finds one creates no coroutine for it.

    :meth:`acquire` waits its turn otherwise: first come, first served, and a slot freed while some wait
    goes straight to the first of them (nobody takes it past them with :meth:`try_take`)."""

    __slots__ = ("_free", "_waiting")

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiting: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        """Whether a slot cannot be taken now."""
        return not self._free or bool(self._waiting)

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits for one; whether it was taken."""
        if self._free and not self._waiting:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting for one if none is free."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:  # a cancel, or anything else thrown in while it waited
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            else:
                waiter.cancel()
                if waiter in self._waiting:  # (a release may have passed it by already)
                    self._waiting.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first that waits for one, else free."""
        waiting = self._waiting
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
