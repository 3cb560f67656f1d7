"""HTTP workers that pull: a worker in any language takes one message with ``GET .../next``, then acks it
or says it failed, over plain HTTP (so a worker behind a NAT, with no inbound HTTP, can work).

The gateway consumes each pull queue with a :class:`event.WorkerPool` of its own, whose handler hands
the message to the next HTTP worker and waits for its answer: an ack returns (the pool acks), a failure
raises (the pool's own retry rules and dead queue apply, exactly as for a Python handler). A lease that
runs out puts the message back in line for the next HTTP worker (counted in ``expired``); the broker
never saw it leave. Delivery is at least once: a gateway that stops (or loses its connection) holds its
messages unacknowledged, so the broker delivers them again, and a lease taken before then can no longer
be acked (404) while the message comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from event import wire
from event.message import Message
from event.pool import WorkerPool
from event.signals import Dead, Retry

PREFETCH = 20  # messages the gateway holds per pull queue for HTTP workers; the rest wait in the broker
MAX_LEASE_S = 3600
MAX_WAIT_S = 60


class HttpWorkerFailed(Exception):
    """An HTTP worker said the message failed (the text is the worker's reason)."""


@dataclass
class Job:
    """A message held for HTTP workers, and the answer its handler waits for."""

    message: Message[Any]
    answer: asyncio.Future[BaseException | None]


@dataclass
class Lease:
    """One job taken by an HTTP worker until ``deadline`` (loop time)."""

    id: str
    queue: str
    job: Job
    timer: asyncio.TimerHandle
    taken: dict[str, int] = field(default_factory=dict)


class NoLease(LookupError):
    """No running lease has that id (unknown, answered already, or expired: the message went back)."""


class NotPulled(LookupError):
    """The queue is not one of this gateway's pull queues."""


def parse_pull(spec: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=KEY[,KEY...]`` (``--pull jobs=app.jobs.#``) as a queue name and its routing keys."""
    name, sep, keys_text = spec.partition("=")
    keys = tuple(k.strip() for k in keys_text.split(",") if k.strip())
    if not sep or not name.strip() or not keys:
        raise ValueError(
            f"--pull {spec!r} must look like NAME=ROUTING_KEY[,ROUTING_KEY], e.g. jobs=app.jobs.#"
        )
    for key in keys:
        wire.validate_routing_key(key, pattern=True)
    return name.strip(), keys


class PullQueues:
    """The pull queues of one namespace: a pool consuming them, the jobs waiting, the leases out."""

    def __init__(
        self, url: str, *, namespace: str, exchange: str, queues: dict[str, tuple[str, ...]]
    ) -> None:
        self.pool = WorkerPool(
            url, namespace=namespace, exchange=exchange, name="event serve (pull)", concurrency=0, grace=1
        )
        self.waiting: dict[str, asyncio.Queue[Job]] = {}
        self.leases: dict[str, Lease] = {}
        self.expired = 0
        for name, keys in queues.items():
            full = wire.queue_name(namespace, name)
            self.waiting[full] = asyncio.Queue()
            self.pool.consumer(*keys, queue=name, prefetch=PREFETCH)(self._handler(full))

    @property
    def names(self) -> list[str]:
        """The pull queues' full names."""
        return sorted(self.waiting)

    def _handler(self, queue: str) -> Any:
        waiting = self.waiting[queue]

        async def handle(ctx: object, msg: Message[Any]) -> None:
            job = Job(msg, asyncio.get_running_loop().create_future())
            await waiting.put(job)
            failure = await job.answer
            if failure is not None:
                raise failure

        return handle

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[PullQueues]:
        """Consume the pull queues until the block ends."""
        async with self.pool.running():
            yield self

    async def next(self, queue: str, *, lease_s: float, wait_s: float) -> dict[str, Any] | None:
        """The next message of ``queue`` leased for ``lease_s``, waiting up to ``wait_s`` for one."""
        waiting = self.waiting.get(queue)
        if waiting is None:
            raise NotPulled(queue)
        try:
            job = await asyncio.wait_for(waiting.get(), wait_s) if wait_s > 0 else waiting.get_nowait()
        except (TimeoutError, asyncio.QueueEmpty):
            return None
        lease_id = uuid.uuid4().hex
        timer = asyncio.get_running_loop().call_later(lease_s, self._expire, lease_id)
        self.leases[lease_id] = Lease(lease_id, queue, job, timer)
        msg = job.message
        view: dict[str, Any] = {
            "lease": lease_id,
            "lease_s": lease_s,
            "queue": queue,
            "message_id": msg.message_id,
            "routing_key": msg.routing_key,
            "attempt": msg.attempt,
            "headers": {
                str(k): v if isinstance(v, str | int | float | bool) else str(v)
                for k, v in msg.headers.items()
            },
        }
        try:
            orjson.dumps(msg.body)
            view["body"] = msg.body
        except TypeError:  # not JSON (bytes of another content type): as text
            view["body"] = msg.raw.decode(errors="replace")
        return view

    def _expire(self, lease_id: str) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None or lease.job.answer.done():
            return
        self.expired += 1
        self.waiting[lease.queue].put_nowait(lease.job)  # back in line for the next HTTP worker

    def _take(self, queue: str, lease_id: str) -> Lease:
        lease = self.leases.get(lease_id)
        if lease is None or lease.queue != queue:
            raise NoLease(lease_id)
        del self.leases[lease_id]
        lease.timer.cancel()
        return lease

    def ack(self, queue: str, lease_id: str) -> None:
        """The HTTP worker handled the message: the pool acks it."""
        self._take(queue, lease_id).job.answer.set_result(None)

    def fail(self, queue: str, lease_id: str, *, error: str, retry_after: float | None, dead: bool) -> None:
        """The HTTP worker failed the message: retried by the pool's rules (after ``retry_after`` when
        given), or straight to the dead queue with ``dead``."""
        failure: BaseException
        if dead:
            failure = Dead(error)
        elif retry_after is not None:
            failure = Retry(error, in_=retry_after)
        else:
            failure = HttpWorkerFailed(error)
        self._take(queue, lease_id).job.answer.set_result(failure)

    def stats(self) -> dict[str, Any]:
        """Jobs waiting per queue, leases out, leases expired so far."""
        return {
            "queues": {name: waiting.qsize() for name, waiting in self.waiting.items()},
            "leased": len(self.leases),
            "expired": self.expired,
        }
