"""Moving a running estate off binding hutch-schedule's exchange: unbind a namespace, lose nothing in flight.

Pools before this version bound their namespace's hutch-schedule delay queues to ``<exchange>.schedule``,
so every hutch-schedule message got one more copy per event namespace, for every Ruby queue on its key.
Pools of this version bind nothing and run one of the copies the remaining namespaces make
(:mod:`event.schedule_copies`), so a namespace's binding can go:

1. refuse unless another namespace's delay queue stays bound at every level (a Ruby service's: else
   nothing would deliver Ruby's delayed messages, and the pool must keep ``declare_delay_queues=True``);
2. unbind the namespace's 21 delay queues: no copy enters them any more;
3. delete each one once it is empty (``if-empty``): what waits in them goes on to the main exchange when
   its delay ends, as it would have, and nothing is purged. Run it again to finish what it left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from event import driver, wire
from event.connect import Channel, Connection, close_quietly, open_channel
from event.errors import ConfigurationError
from event.management import ManagementApi

POLL_S = 1.0


@dataclass
class Unbound:
    """What :func:`unbind_schedule` did: queues unbound, deleted, and left holding messages."""

    unbound: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)  # queue -> messages still in it


async def others_bound(api: ManagementApi, namespace: str, exchange: str) -> dict[int, list[str]]:
    """Per level, the delay queues of other namespaces bound to the schedule exchange with its key."""
    ours = {wire.delay_queue_name(namespace, exchange, level) for level in wire.LEVELS}
    keys = {wire.schedule_routing_key(exchange, level): level for level in wire.LEVELS}
    found: dict[int, list[str]] = {level: [] for level in wire.LEVELS}
    for binding in await api.bindings_from(wire.schedule_exchange_name(exchange)):
        queue = binding.get("destination", "")
        level = keys.get(binding.get("routing_key", ""))
        if binding.get("destination_type") != "queue" or level is None or queue in ours:
            continue
        if wire.is_delay_queue_name(queue, exchange):
            found[level].append(queue)
    return found


async def unbind_schedule(
    connection: Connection,
    api: ManagementApi,
    namespace: str,
    exchange: str,
    *,
    wait: bool,
    report: Callable[[str], None] = print,
    poll_s: float = POLL_S,
) -> Unbound:
    """Unbind ``namespace``'s delay queues from the schedule exchange and delete each once empty.

    With ``wait``, returns when all are deleted (at most the longest delay waiting in them);
    without, deletes those empty now and reports the others.
    """
    bare = [level for level, queues in (await others_bound(api, namespace, exchange)).items() if not queues]
    if bare:
        raise ConfigurationError(
            f"no other namespace's delay queue is bound to {wire.schedule_exchange_name(exchange)!r} for "
            f"level(s) {', '.join(f'{level}s' for level in bare)}: unbinding {namespace!r} would leave "
            f"hutch-schedule's messages of those levels undelivered. If no Ruby service runs hutch-schedule "
            f"here, keep this pool's declare_delay_queues=True instead"
        )
    done = Unbound()
    channel = await open_channel(connection, confirms=False)
    try:
        for level in wire.LEVELS:
            queue = wire.delay_queue_name(namespace, exchange, level)
            channel = await _fresh(connection, channel)
            try:
                await channel.queue_declare(queue, passive=True)
            except driver.NotFound:
                continue  # never declared, or deleted by an earlier run
            await channel.queue_unbind(
                queue, wire.schedule_exchange_name(exchange), wire.schedule_routing_key(exchange, level)
            )
            done.unbound.append(queue)
        report(f"unbound {len(done.unbound)} delay queue(s) of {namespace!r}: no new copies enter them")
        left = list(done.unbound)
        while left:
            for queue in list(left):
                channel = await _fresh(connection, channel)
                try:
                    declared = await channel.queue_declare(queue, passive=True)
                except driver.NotFound:
                    left.remove(queue)
                    continue
                count = declared.message_count
                if count == 0:
                    await channel.queue_delete(queue, if_empty=True)
                    done.deleted.append(queue)
                    left.remove(queue)
                    done.waiting.pop(queue, None)
                else:
                    done.waiting[queue] = count
            if not left or not wait:
                break
            report(f"waiting for {sum(done.waiting.values())} message(s) in {len(left)} queue(s) to go on")
            await asyncio.sleep(poll_s)
    finally:
        await close_quietly(channel)
    for queue, count in done.waiting.items():
        report(f"{queue} still holds {count} message(s) waiting for their delay; run again to delete it")
    report(f"deleted {len(done.deleted)} empty delay queue(s) of {namespace!r}")
    return done


async def _fresh(connection: Connection, channel: Channel) -> Channel:
    # A NOT_FOUND closes the channel it answered on.
    return await open_channel(connection, confirms=False) if channel.is_closed else channel
