"""Checked by mypy --strict in tests/unit/test_typing.py: each line ending in an "E:" comment must be
rejected with the error code it names, and no other line may be."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from event import Context, Contract, Message, Publisher, WorkerPool

pool = WorkerPool(namespace="typed")


@dataclass
class SendEmail:
    to: str
    subject: str


@dataclass
class SendSms:
    number: str


class Invoice(TypedDict):
    number: int
    total: float


SEND_EMAIL = Contract("app.send_email", SendEmail)
INVOICE = Contract("app.invoice", Invoice)
SEND_SMS: Contract[SendSms] = Contract("app.send_sms", SendEmail)  # E: arg-type


@SEND_EMAIL.consumer(pool)  # E: arg-type
async def typed_for_another(ctx: Context, msg: Message[SendSms]) -> None:
    print(msg.body.number)


# The consumer options are one TypedDict (event.consumer.ConsumerOptions): mypy still checks each by name.
@pool.consumer("app.misspelt", prefech=30)  # E: call-arg
async def misspelt_option(ctx: Context, msg: Message[SendSms]) -> None:
    print(msg.body.number)


@pool.consumer("app.wrong_type", max_concurrency="5")  # E: arg-type
async def option_of_another_type(ctx: Context, msg: Message[SendSms]) -> None:
    print(msg.body.number)


async def publish(publisher: Publisher) -> None:
    await publisher.to(SEND_EMAIL).publish(SendSms(number="+44"))  # E: arg-type
    await publisher.to(SEND_EMAIL).publish(SendEmail(to="ada@example.com"))  # E: call-arg
    await publisher.to(INVOICE).publish({"number": 1})  # E: typeddict-item
    await publisher.to(INVOICE).publish_in(5, {"number": "1", "total": 2.0})  # E: typeddict-item
    await publisher.to(SEND_EMAIL).publish_in(SendEmail("a", "b"), 5)  # E: arg-type
    await publisher.to(SEND_EMAIL).publish(SendEmail("a", "b"), routing_key="x")  # E: call-arg
