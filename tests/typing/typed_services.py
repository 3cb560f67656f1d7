"""Checked by mypy --strict in tests/unit/test_protoc_plugin.py, beside the modules protoc-gen-event
generates from tests/protos: their producers and servicers used as written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from eventtest import shop_services_pb2 as pb
from eventtest.shop_services_event import (
    BillingProducer,
    UsersProducer,
    register_billing,
    register_users,
)

from event import Context, Message, Publisher, WorkerPool


class Users:
    async def Create(self, ctx: Context, msg: Message[pb.CreateUser]) -> None:
        email: str = msg.body.email
        print(email)

    async def Get(self, ctx: Any, msg: Message[pb.GetUser]) -> pb.User:
        return pb.User(user_id=msg.body.user_id, status=pb.User.ACTIVE)

    async def Forget(self, ctx: Any, msg: Message[pb.ForgetUser]) -> None: ...


class Billing:
    async def Charge(self, ctx: Any, msg: Message[pb.ChargeOrder]) -> None: ...

    async def Refund(self, ctx: Any, msg: Message[pb.RefundOrder]) -> None: ...

    async def Quote(self, ctx: Any, msg: Message[pb.QuoteRequest]) -> pb.PriceQuote:
        return pb.PriceQuote(total_cents=sum(item.quantity for item in msg.body.items))


async def main(pool: WorkerPool, publisher: Publisher) -> None:
    users_registered = register_users(pool, Users(), max_concurrency=5, methods={"Get": {"prefetch": 10}})
    billing_registered = register_billing(pool, Billing())
    async with UsersProducer(publisher) as users, BillingProducer(publisher) as billing:
        await users.Create(pb.CreateUser(user_id="u-1", email="ada@example.com"), mandatory=True)
        await users.Create_in(30, pb.CreateUser(user_id="u-2"), message_id="create-u-2")
        await users.Forget_at(datetime(2030, 1, 1, tzinfo=UTC), pb.ForgetUser(user_id="u-1"))
        user: pb.User = await users.Get(pb.GetUser(user_id="u-1"), reply=True, timeout=5)
        await users.Get(pb.GetUser(user_id="u-1"))  # as an event: no answer
        quote = await billing.Quote(pb.QuoteRequest(items=[pb.Item(sku="tea", quantity=2)]), reply=True)
        total: int = quote.total_cents
        await billing.Charge(pb.ChargeOrder(order_id="o-1", amount_cents=total))
        print(user.email)
    await users_registered.close()
    await billing_registered.close()
