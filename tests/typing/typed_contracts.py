"""Checked by mypy --strict in tests/unit/test_typing.py: typed contracts used as written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

from pydantic import BaseModel

from event import Context, Contract, Message, Publisher, WorkerPool

pool = WorkerPool(namespace="typed")


@dataclass
class SendEmail:
    to: str
    subject: str


class Invoice(TypedDict):
    number: int
    total: float


class Signup(BaseModel):
    email: str


SEND_EMAIL = Contract("app.send_email", SendEmail)
INVOICE = Contract("app.invoice", Invoice, description="an invoice was issued")
SIGNUP = Contract("app.signup", Signup)


@SEND_EMAIL.consumer(pool, max_concurrency=5)
async def send_email(ctx: Context, msg: Message[SendEmail]) -> None:
    subject: str = msg.body.subject
    print(subject)


@INVOICE.consumer(pool, queue="invoices")
def invoice(ctx: Context, msg: Message[Any], payload: Invoice) -> None:
    total: float = payload["total"]
    print(total)


@pool.consumer(*SIGNUP.routing_keys)
async def signup(ctx: Context, msg: Message[Signup]) -> None:
    print(msg.body.email)


async def publish(publisher: Publisher) -> None:
    await publisher.to(SEND_EMAIL).publish(SendEmail(to="ada@example.com", subject="hi"))
    await publisher.to(INVOICE).publish_in(30, {"number": 1, "total": 9.5}, message_id="i-1")
    await publisher.to(SIGNUP).publish_at(datetime(2030, 1, 1, tzinfo=UTC), Signup(email="a@b.c"))
