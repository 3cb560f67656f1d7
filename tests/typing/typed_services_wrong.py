"""Checked by mypy --strict in tests/unit/test_protoc_plugin.py: each line ending in an "E:" comment
must be rejected with the error code it names, and no other line may be."""

from __future__ import annotations

from typing import Any

from eventtest import shop_services_pb2 as pb
from eventtest.shop_services_event import BillingProducer, UsersProducer, register_billing, register_users

from event import Message, Publisher, WorkerPool


class MissingForget:
    async def Create(self, ctx: Any, msg: Message[pb.CreateUser]) -> None: ...

    async def Get(self, ctx: Any, msg: Message[pb.GetUser]) -> pb.User:
        return pb.User()


class RequestOfAnotherRpc:
    async def Charge(self, ctx: Any, msg: Message[pb.RefundOrder]) -> None: ...

    async def Refund(self, ctx: Any, msg: Message[pb.RefundOrder]) -> None: ...

    async def Quote(self, ctx: Any, msg: Message[pb.QuoteRequest]) -> pb.PriceQuote:
        return pb.PriceQuote()


class AnswersNothing:
    async def Charge(self, ctx: Any, msg: Message[pb.ChargeOrder]) -> None: ...

    async def Refund(self, ctx: Any, msg: Message[pb.RefundOrder]) -> None: ...

    async def Quote(self, ctx: Any, msg: Message[pb.QuoteRequest]) -> None: ...


class NotAsync:
    def Charge(self, ctx: Any, msg: Message[pb.ChargeOrder]) -> None: ...

    async def Refund(self, ctx: Any, msg: Message[pb.RefundOrder]) -> None: ...

    async def Quote(self, ctx: Any, msg: Message[pb.QuoteRequest]) -> pb.PriceQuote:
        return pb.PriceQuote()


async def main(pool: WorkerPool, publisher: Publisher) -> None:
    register_users(pool, MissingForget())  # E: arg-type
    register_billing(pool, RequestOfAnotherRpc())  # E: arg-type
    register_billing(pool, AnswersNothing())  # E: arg-type
    register_billing(pool, NotAsync())  # E: arg-type
    users, billing = UsersProducer(publisher), BillingProducer(publisher)
    await users.Create(pb.GetUser(user_id="u-1"))  # E: arg-type
    await users.Create_in(pb.CreateUser(user_id="u-1"), 5)  # E: arg-type
    await billing.Charge(pb.ChargeOrder(order_id="o-1", amount_cents="12"))  # E: arg-type
    await billing.Refund(pb.RefundOrder(order_id="o-1"), reply=True)  # E: call-arg
    await users.Get(pb.GetUser(user_id="u-1"), reply=True, mandatory=True)  # E: call-overload
    quote: pb.User = await billing.Quote(pb.QuoteRequest(), reply=True)  # E: assignment
    print(quote)
