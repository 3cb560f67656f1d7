"""Protobuf services on the real broker: each rpc of 2 services x 3 round-trips through the generated
producer and registration (binary protobuf, and JSON from another client), and requests sent for their
answer come back over direct reply-to: an answer, a servicer's error, a timeout, a late reply dropped.

The modules are generated at test time from tests/protos (tests/protoc_support.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiormq
import orjson
import pytest
from protoc_support import importable
from support import Isolation, Management, Probe, eventually

from event import (
    ConnectionFailed,
    Context,
    Message,
    Publisher,
    RemoteError,
    ReplyTimeout,
    Unroutable,
    WorkerPool,
    wire,
)
from event.replies import Requester

importable()
from eventtest import shop_services_event as shop  # noqa: E402
from eventtest import shop_services_pb2 as pb  # noqa: E402


class Users:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Message[Any]]] = []
        self.gate = asyncio.Event()  # what a request for user "gated" waits for

    async def Create(self, ctx: Context, msg: Message[pb.CreateUser]) -> None:
        self.seen.append(("Create", msg))

    async def Get(self, ctx: Context, msg: Message[pb.GetUser]) -> pb.User:
        self.seen.append(("Get", msg))
        if msg.body.user_id == "nobody":
            raise LookupError(f"no user {msg.body.user_id!r}")
        if msg.body.user_id == "slow":
            await asyncio.sleep(1.5)
        if msg.body.user_id == "gated":
            await self.gate.wait()
        return pb.User(
            user_id=msg.body.user_id, email="ada@example.com", credit_cents=2**40, status=pb.User.ACTIVE
        )

    async def Forget(self, ctx: Context, msg: Message[pb.ForgetUser]) -> None:
        self.seen.append(("Forget", msg))


class Billing:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Message[Any]]] = []

    async def Charge(self, ctx: Context, msg: Message[pb.ChargeOrder]) -> None:
        self.seen.append(("Charge", msg))

    async def Refund(self, ctx: Context, msg: Message[pb.RefundOrder]) -> None:
        self.seen.append(("Refund", msg))

    async def Quote(self, ctx: Context, msg: Message[pb.QuoteRequest]) -> pb.PriceQuote:
        self.seen.append(("Quote", msg))
        return pb.PriceQuote(total_cents=sum(250 * item.quantity for item in msg.body.items))


def requester(amqp_url: str, iso: Isolation) -> Requester:
    return Requester(amqp_url, exchange=iso.exchange, name=f"requester {iso.namespace}")


async def test_each_rpc_of_both_services_round_trips_binary_and_json_from_another_client(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    users, billing = Users(), Billing()
    registered = [shop.register_users(pool, users), shop.register_billing(pool, billing, max_concurrency=2)]
    async with (
        pool.running(),
        Publisher(**pool_kwargs) as publisher,
        shop.UsersProducer(publisher) as user_calls,
        shop.BillingProducer(publisher) as bills,
    ):
        await user_calls.Create(pb.CreateUser(user_id="u-1", email="ada@example.com"), mandatory=True)
        await user_calls.Get(pb.GetUser(user_id="u-1"), mandatory=True)  # as an event: no answer wanted
        await user_calls.Forget_at(datetime.now(UTC), pb.ForgetUser(user_id="u-1"))
        await bills.Charge(pb.ChargeOrder(order_id="o-1", amount_cents=12_345_678_901))
        await bills.Refund_in(0, pb.RefundOrder(order_id="o-1", reason="broken"))
        await bills.Quote(pb.QuoteRequest(items=[pb.Item(sku="tea", quantity=2)]))
        # Another client's JSON (the .proto's names, 64-bit integers as strings): read by the mapping.
        await probe.publish(
            iso.exchange,
            "eventtest.shop.Billing.Charge",
            orjson.dumps({"order_id": "o-2", "amount_cents": "7", "unknown": 1}),
            content_type="application/json",
        )
        await eventually(lambda: len(users.seen) == 3 and len(billing.seen) == 4)
    for one in registered:
        await one.close()

    got = {name: msg for name, msg in users.seen + billing.seen if msg.headers.get("x") is None}
    assert got["Create"].body == pb.CreateUser(user_id="u-1", email="ada@example.com")
    assert got["Forget"].routing_key == "eventtest.users.forgotten"  # the rpc's routing key option
    assert got["Refund"].body == pb.RefundOrder(order_id="o-1", reason="broken")
    assert got["Quote"].body.items[0] == pb.Item(sku="tea", quantity=2)
    assert got["Get"].body == pb.GetUser(user_id="u-1")
    charges = [msg for name, msg in billing.seen if name == "Charge"]
    assert sorted(msg.body.order_id for msg in charges) == ["o-1", "o-2"]
    binary = next(msg for msg in charges if msg.body.order_id == "o-1")
    assert binary.raw == pb.ChargeOrder(order_id="o-1", amount_cents=12_345_678_901).SerializeToString()
    assert next(msg for msg in charges if msg.body.order_id == "o-2").body.amount_cents == 7
    assert {msg.routing_key for _, msg in users.seen + billing.seen} == {
        "eventtest.shop.Users.Create", "eventtest.shop.Users.Get", "eventtest.users.forgotten",
        "eventtest.shop.Billing.Charge", "eventtest.shop.Billing.Refund", "eventtest.shop.Billing.Quote",
    }  # fmt: skip


async def test_a_request_sent_for_its_answer_gets_the_servicers_return_value_or_its_error(
    pool_kwargs: dict[str, Any], amqp_url: str, iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    users, billing = Users(), Billing()
    registered = [shop.register_users(pool, users), shop.register_billing(pool, billing)]
    calls = requester(amqp_url, iso)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        user_calls = shop.UsersProducer(publisher, requester=calls)
        started = time.monotonic()
        user = await user_calls.Get(pb.GetUser(user_id="u-7"), reply=True, timeout=5)
        took = time.monotonic() - started
        quote = await shop.BillingProducer(publisher, requester=calls).Quote(
            pb.QuoteRequest(items=[pb.Item(sku="tea", quantity=3)]), reply=True, timeout=5
        )
        answers = await asyncio.gather(
            *(user_calls.Get(pb.GetUser(user_id=f"u-{n}"), reply=True, timeout=5) for n in range(20))
        )
        with pytest.raises(RemoteError) as raised:
            await user_calls.Get(pb.GetUser(user_id="nobody"), reply=True, timeout=5)
        dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)

        async def dead_copy() -> bool:
            return await probe.depth(dead_queue) == 1

        await eventually(dead_copy)  # not retried: the caller has its answer
    await calls.close()
    for one in registered:
        await one.close()

    assert user == pb.User(user_id="u-7", email="ada@example.com", credit_cents=2**40, status=pb.User.ACTIVE)
    assert took < 5
    assert quote == pb.PriceQuote(total_cents=750)
    assert [answer.user_id for answer in answers] == [f"u-{n}" for n in range(20)]  # each its own answer
    assert (raised.value.type, raised.value.detail) == ("LookupError", "no user 'nobody'")
    assert [name for name, _ in users.seen].count("Get") == 22
    [dead] = await probe.take_all(dead_queue)
    assert dead.header.properties.headers[wire.H_ERROR].startswith(
        "Dead: answered the caller with LookupError"
    )


async def test_with_the_servicer_down_the_caller_times_out_and_nothing_is_left_in_any_queue(
    pool_kwargs: dict[str, Any], amqp_url: str, iso: Isolation, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    pool = WorkerPool(**pool_kwargs)
    users = Users()
    registered = shop.register_users(pool, users)
    async with pool.running():  # declares the rpcs' queues, then the servicer goes down
        pass
    calls = requester(amqp_url, iso)
    caplog.set_level(logging.DEBUG, logger="event.replies")
    get_queue = f"{iso.namespace}:eventtest:shop:users:get"
    async with Publisher(**pool_kwargs) as publisher:
        user_calls = shop.UsersProducer(publisher, requester=calls)
        started = time.monotonic()
        with pytest.raises(
            ReplyTimeout, match=r"no reply to the request to 'eventtest.shop.Users.Get' within 1 s"
        ):
            await user_calls.Get(pb.GetUser(user_id="u-1"), reply=True, timeout=1)
        assert 1 <= time.monotonic() - started < 3

        async def expired() -> bool:
            return await probe.depth(get_queue) == 0

        await eventually(expired, timeout=10)  # the request expired from its queue (expiration: the timeout)
        # Nothing serves Billing at all: no queue is bound, the request comes back at once.
        with pytest.raises(Unroutable, match="nothing serves the request"):
            await shop.BillingProducer(publisher, requester=calls).Quote(
                pb.QuoteRequest(), reply=True, timeout=5
            )
        [learnt] = [r.args for r in caplog.records if r.name == "event.replies" and "learnt" in r.msg]
        assert isinstance(learnt, tuple) and str(learnt[0]).startswith("amq.rabbitmq.reply-to.")
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await probe.depth(str(learnt[1]))
    async with pool.running():  # back up: the expired request is not worked on for nobody
        await asyncio.sleep(0.5)
    await calls.close()
    await registered.close()
    assert users.seen == []
    assert await probe.depth(get_queue) == 0


async def test_a_reply_whose_caller_stopped_waiting_is_dropped(
    pool_kwargs: dict[str, Any], amqp_url: str, iso: Isolation
) -> None:
    pool = WorkerPool(**pool_kwargs)
    users = Users()
    registered = shop.register_users(pool, users)
    calls = requester(amqp_url, iso)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        user_calls = shop.UsersProducer(publisher, requester=calls)
        with pytest.raises(ReplyTimeout):
            await user_calls.Get(pb.GetUser(user_id="slow"), reply=True, timeout=0.5)
        await eventually(lambda: calls.late == 1, timeout=5)  # the servicer answered after 1.5 s
        answer = await user_calls.Get(pb.GetUser(user_id="u-2"), reply=True, timeout=5)  # the channel goes on
    await calls.close()
    await registered.close()
    assert answer.user_id == "u-2"


async def test_a_lost_connection_fails_the_waiting_requests_and_the_next_one_reconnects(
    pool_kwargs: dict[str, Any], amqp_url: str, iso: Isolation, management: Management
) -> None:
    pool = WorkerPool(**pool_kwargs)
    users = Users()
    registered = shop.register_users(pool, users)
    calls = requester(amqp_url, iso)
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        user_calls = shop.UsersProducer(publisher, requester=calls)
        waiting = asyncio.ensure_future(user_calls.Get(pb.GetUser(user_id="gated"), reply=True, timeout=30))
        await eventually(lambda: any(msg.body.user_id == "gated" for _, msg in users.seen))
        await eventually(lambda: management.close_connections(calls.name) == 1, timeout=15)
        with pytest.raises(ConnectionFailed, match="lost its reply channel"):
            await asyncio.wait_for(waiting, timeout=10)
        users.gate.set()  # its answer goes to an address whose channel is gone: the broker drops it
        answer = await user_calls.Get(pb.GetUser(user_id="u-3"), reply=True, timeout=5)
    await calls.close()
    await registered.close()
    assert answer.user_id == "u-3"
    assert calls.late == 0
