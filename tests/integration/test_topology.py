"""What the pool declares on the broker equals the spec (sections 1, 2 and 7)."""

from __future__ import annotations

from typing import Any

import aiormq
import pytest
from support import Isolation, Management

from event import TopologyMismatch, WorkerPool, topology, wire


def as_declared(reported: dict[str, Any]) -> dict[str, Any]:
    """A queue's arguments as the broker reports them, less the defaults 4.x adds (x-queue-type: classic)."""
    return {k: v for k, v in reported.items() if topology.SERVER_DEFAULTS.get(k, object()) != v}


async def test_pool_declares_exchange_queues_and_bindings_as_hutch(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management
) -> None:
    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.send_email")
    async def send_email(ctx: object, msg: object) -> None: ...

    @pool.consumer("app.user.*", "app.order.#", queue="userEvents", arguments={"x-queue-type": "quorum"})
    async def users(ctx: object, msg: object) -> None: ...

    async with pool.running():
        exchange = management.exchange(iso.exchange)
        assert (exchange["type"], exchange["durable"], exchange["auto_delete"], exchange["arguments"]) == (
            "topic",
            True,
            False,
            {},
        )
        ns = iso.namespace
        expected = {
            f"{ns}:send_email": ({}, {"app.send_email", f"{ns}:send_email"}),
            f"{ns}:userEvents": (  # a quorum queue: the broker's own delivery limit dead-letters to us
                {
                    "x-queue-type": "quorum",
                    **wire.quorum_poison_arguments(
                        wire.dead_queue_name(ns, iso.exchange), wire.DEFAULT_MAX_DELIVERIES
                    ),
                },
                {"app.user.*", "app.order.#", f"{ns}:userEvents"},
            ),
        }
        for name, (arguments, keys) in expected.items():
            queue = management.queue(name)
            assert (queue["durable"], queue["auto_delete"], queue["exclusive"]) == (True, False, False)
            assert as_declared(queue["arguments"]) == arguments
            bound = {b["routing_key"] for b in management.bindings_of(name) if b["source"] == iso.exchange}
            assert bound == keys
        dead = management.queue(wire.dead_queue_name(ns, iso.exchange))
        assert dead["durable"] is True
        assert as_declared(dead["arguments"]) == {"x-message-ttl": 2592000000, "x-max-length": 100000}
        assert [b["source"] for b in management.bindings_of(dead["name"])] == [""]  # default exchange only


async def test_a_queue_with_other_arguments_is_a_clear_mismatch(
    pool_kwargs: dict[str, Any], iso: Isolation, amqp_url: str
) -> None:
    connection = await aiormq.connect(amqp_url)
    channel = await connection.channel()
    await channel.queue_declare(f"{iso.namespace}:send_email", durable=True, arguments={"x-max-length": 10})
    await connection.close()

    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.send_email")
    async def send_email(ctx: object, msg: object) -> None: ...

    with pytest.raises(TopologyMismatch) as caught:
        async with pool.running():
            pass
    text = str(caught.value)
    assert f"{iso.namespace}:send_email" in text
    assert "x-max-length" in text  # the broker's side, named in its own words
    assert "{}" in text  # our side: no arguments


async def test_a_dead_queue_with_other_bounds_is_a_clear_mismatch(pool_kwargs: dict[str, Any]) -> None:
    first = WorkerPool(**pool_kwargs, dead_queue_max_length=10)

    @first.consumer("app.a")
    async def a(ctx: object, msg: object) -> None: ...

    async with first.running():
        pass

    second = WorkerPool(**pool_kwargs)
    second.consumer("app.a")(a)
    with pytest.raises(TopologyMismatch, match=r"dead queue .*x-max-length"):
        async with second.running():
            pass


async def test_an_exchange_of_another_type_is_a_clear_mismatch(
    pool_kwargs: dict[str, Any], iso: Isolation, amqp_url: str
) -> None:
    connection = await aiormq.connect(amqp_url)
    channel = await connection.channel()
    await channel.exchange_declare(iso.exchange, exchange_type="fanout", durable=True)
    await connection.close()

    pool = WorkerPool(**pool_kwargs)

    @pool.consumer("app.a")
    async def a(ctx: object, msg: object) -> None: ...

    with pytest.raises(TopologyMismatch, match=rf"exchange '{iso.exchange}'.*type topic"):
        async with pool.running():
            pass
