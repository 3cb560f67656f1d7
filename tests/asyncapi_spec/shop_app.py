"""A consumer service of the shop: typed consumers from the shared contracts, an untyped one, a schedule."""

from __future__ import annotations

from typing import Any

from shop_contracts import ORDER_PLACED, REFUND, SIGNUP, OrderPlaced, Refund, Signup

from event import Context, Message, WorkerPool

pool = WorkerPool(url="amqp://shop:secret@rabbit.internal:5672/shop", namespace="shop")


@ORDER_PLACED.consumer(pool, retries=5, timeout=30)
async def ship(ctx: Context, msg: Message[OrderPlaced]) -> None: ...


@REFUND.consumer(pool)
def refund(ctx: Context, msg: Message[Any], payload: Refund) -> None: ...


@pool.consumer(*SIGNUP.routing_keys, queue="welcome")
async def welcome(ctx: Context, msg: Message[Signup]) -> None: ...


@pool.consumer("shop.#", "audit.*", queue="audit", backoff=lambda failures: 60.0)
async def audit(ctx: Context, msg: Message[Any]) -> None: ...


@pool.cron("0 3 * * *", "shop.report.nightly", payload={"kind": "nightly"}, name="nightly-report")
async def nightly(ctx: Context, msg: Message[Any]) -> None: ...
