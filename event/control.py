"""Operators' commands to every running worker of a namespace: pause or resume a consumer queue, or
report its state.

A command is a small JSON message on the control exchange (``wire.control_exchange_name``), routed by
the namespace. Each worker listens on an exclusive, auto-delete queue of its own bound to it, so every
worker receives every command, and the queue disappears with the worker's connection (exclusive, so
RabbitMQ 4.3, which refuses transient non-exclusive queues, accepts it too). Commands are not kept: a
worker that starts later does not learn of an earlier pause.

A report request names a queue of the asker's (``reply_to``); each worker that hears it answers there,
through the default exchange, with :func:`report`'s JSON: its host, pid, event's version and, per
consumer queue, the outcomes it counted since it started (:mod:`event.metrics`), the handlers in flight
and whether it is paused. Workers publish nothing unasked: the state costs nothing while no one looks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson

from event import wire
from event.connect import Channel, Connection, close_quietly, open_channel
from event.driver import Delivery
from event.metrics import PoolStats
from event.sending import Sender, properties

log = logging.getLogger(__name__)

ACTIONS = ("pause", "resume")
REPORT = "report"
# The outcomes a report gives per consumer queue (event.metrics' names): "handled" is shown as processed.
REPORTED = ("handled", "failed", "retried", "dead")


@dataclass(frozen=True, slots=True)
class Command:
    """``action`` (one of :data:`ACTIONS`) for the consumer queue named ``queue``."""

    action: str
    queue: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"control action must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        if not isinstance(self.queue, str) or not self.queue:
            raise ValueError(f"a control command needs a queue name, not {self.queue!r}")


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """Every worker that hears it answers with :func:`report` on the queue named ``reply_to``."""

    reply_to: str


def encode_command(command: Command | ReportRequest) -> bytes:
    """The body of a control message."""
    if isinstance(command, ReportRequest):
        return orjson.dumps({"action": REPORT, "reply_to": command.reply_to})
    return orjson.dumps({"action": command.action, "queue": command.queue})


def decode_command(raw: bytes) -> Command | ReportRequest | None:
    """The command in a control message, or None for anything else (ignored: a newer sender's verbs)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("action") == REPORT:
        reply_to = data.get("reply_to")
        return ReportRequest(reply_to) if isinstance(reply_to, str) and reply_to else None
    try:
        return Command(data.get("action"), data.get("queue"))  # type: ignore[arg-type]
    except ValueError:
        return None


def _version() -> str | None:
    try:
        return version("rabbit-event")
    except PackageNotFoundError:
        return None


VERSION = _version()
HOST = socket.gethostname()


def report(stats: PoolStats) -> dict[str, Any]:
    """This worker's state: host, pid, event's version, and per consumer queue its counted outcomes
    (cumulative since the process started), handlers in flight and whether it is paused."""
    return {
        "host": HOST,
        "pid": os.getpid(),
        "version": VERSION,
        "consumers": {
            c.queue: {
                **{outcome: sum(c.outcomes[outcome].values()) for outcome in REPORTED},
                "in_flight": c.in_flight(),
                "paused": c.paused(),
            }
            for c in stats.consumers
        },
    }


async def declare_control_exchange(channel: Channel, exchange: str) -> None:
    """Declare the control exchange of ``exchange`` (durable, direct; idempotent)."""
    await channel.exchange_declare(wire.control_exchange_name(exchange), exchange_type="direct", durable=True)


async def listen(
    connection: Connection,
    *,
    namespace: str,
    exchange: str,
    on_command: Callable[[Command], Awaitable[None]],
    state: Callable[[], dict[str, Any]] | None = None,
) -> Channel:
    """Receive the namespace's commands on a channel of ``connection``; returns that channel.

    ``on_command`` runs for each command in a task of its own, started in arrival order: to apply
    commands in that order it must take a lock before its first ``await``. An error in it is logged
    and the next command still arrives. A report request is answered with ``state()`` (plus this
    worker's control queue), unconfirmed: an asker that is gone loses nothing; without ``state`` it is
    ignored.
    """
    channel = await open_channel(connection, confirms=False)
    running: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references
    queue = ""

    async def answer(request: ReportRequest) -> None:
        assert state is not None
        body = orjson.dumps({**state(), "control_queue": queue})
        try:
            await channel.basic_publish(body, routing_key=request.reply_to, properties=properties())
        except Exception as exc:  # the channel or connection went: the asker gets no answer from us
            log.debug("no state report to %s: %s", request.reply_to, exc)

    async def apply(command: Command) -> None:
        try:
            await on_command(command)
        except Exception:
            log.exception("control command %s %s failed", command.action, command.queue)

    def on_message(delivery: Delivery) -> None:
        command = decode_command(delivery.body)
        if command is None:
            log.warning("ignored a control message that is not a command: %r", delivery.body[:200])
            return
        if isinstance(command, ReportRequest):
            if state is None:
                return
            task = asyncio.get_running_loop().create_task(answer(command))
            running.add(task)
            task.add_done_callback(running.discard)
            return
        task = asyncio.get_running_loop().create_task(apply(command))
        running.add(task)
        task.add_done_callback(running.discard)

    try:
        await declare_control_exchange(channel, exchange)
        declared = await channel.queue_declare("", exclusive=True, auto_delete=True, durable=False)
        queue = declared.queue
        await channel.queue_bind(
            queue, wire.control_exchange_name(exchange), routing_key=wire.control_routing_key(namespace)
        )
        await channel.basic_consume(queue, on_message, no_ack=True)
    except BaseException:
        await close_quietly(channel)
        raise
    return channel


async def send_command(sender: Sender, command: Command, *, namespace: str, exchange: str) -> None:
    """Publish ``command`` to the namespace's workers through ``sender``, confirmed.

    Mandatory: when no worker listens, :class:`event.errors.Unroutable` says so instead of the
    command vanishing.
    """
    await sender.send(
        wire.control_exchange_name(exchange),
        wire.control_routing_key(namespace),
        encode_command(command),
        properties(),
        mandatory=True,
    )


async def request_report(sender: Sender, reply_to: str, *, namespace: str, exchange: str) -> None:
    """Ask the namespace's running workers for their state, answered on the queue ``reply_to``.

    Mandatory, as :func:`send_command`: :class:`event.errors.Unroutable` when no worker listens.
    """
    await sender.send(
        wire.control_exchange_name(exchange),
        wire.control_routing_key(namespace),
        encode_command(ReportRequest(reply_to)),
        properties(),
        mandatory=True,
    )
