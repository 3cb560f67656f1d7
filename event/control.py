"""Operators' commands to every running worker of a namespace: pause or resume a consumer queue.

A command is a small JSON message on the control exchange (``wire.control_exchange_name``), routed by
the namespace. Each worker listens on an exclusive, auto-delete queue of its own bound to it, so every
worker receives every command, and the queue disappears with the worker's connection (exclusive, so
RabbitMQ 4.3, which refuses transient non-exclusive queues, accepts it too). Commands are not kept: a
worker that starts later does not learn of an earlier pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from event import wire
from event.connect import Channel, Connection, close_quietly, open_channel
from event.driver import Delivery
from event.sending import Sender, properties

log = logging.getLogger("event.control")

ACTIONS = ("pause", "resume")


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


def encode_command(command: Command) -> bytes:
    """The body of a control message."""
    return orjson.dumps({"action": command.action, "queue": command.queue})


def decode_command(raw: bytes) -> Command | None:
    """The command in a control message, or None for anything else (ignored: a newer sender's verbs)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        return Command(data.get("action"), data.get("queue"))  # type: ignore[arg-type]
    except ValueError:
        return None


async def declare_control_exchange(channel: Channel, exchange: str) -> None:
    """Declare the control exchange of ``exchange`` (durable, direct; idempotent)."""
    await channel.exchange_declare(wire.control_exchange_name(exchange), exchange_type="direct", durable=True)


async def listen(
    connection: Connection,
    *,
    namespace: str,
    exchange: str,
    on_command: Callable[[Command], Awaitable[None]],
) -> Channel:
    """Receive the namespace's commands on a channel of ``connection``; returns that channel.

    ``on_command`` runs for each command in a task of its own, started in arrival order: to apply
    commands in that order it must take a lock before its first ``await``. An error in it is logged
    and the next command still arrives.
    """
    channel = await open_channel(connection, confirms=False)
    running: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references

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
