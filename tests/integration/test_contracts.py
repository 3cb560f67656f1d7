"""Typed contracts on the real broker: a contract publish reaches the contract's typed consumer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

import pytest
from pydantic import BaseModel
from support import eventually

from event import ConfigurationError, Context, Contract, Message, Publisher, WorkerPool


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
INVOICE = Contract("app.invoice", Invoice)
SIGNUP = Contract("app.signup", Signup)


async def test_contract_publishes_reach_their_typed_consumers(pool_kwargs: dict[str, Any]) -> None:
    pool = WorkerPool(**pool_kwargs)
    emails: list[tuple[str, SendEmail]] = []
    invoices: list[Invoice] = []
    signups: list[Signup] = []

    @SEND_EMAIL.consumer(pool, max_concurrency=2)
    async def send_email(ctx: Context, msg: Message[SendEmail]) -> None:
        emails.append((msg.routing_key, msg.body))

    @INVOICE.consumer(pool, queue="invoices")
    def invoice(ctx: Context, msg: Message[Any], payload: Invoice) -> None:
        invoices.append(payload)

    @pool.consumer(*SIGNUP.routing_keys)
    async def signup(ctx: Context, msg: Message[Signup]) -> None:
        signups.append(msg.body)

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.to(SEND_EMAIL).publish(SendEmail("ada@example.com", "hi"), mandatory=True)
        await publisher.to(INVOICE).publish_in(0, {"number": 7, "total": 9.5})
        await publisher.to(SIGNUP).publish_at(datetime.now(UTC), Signup(email="b@example.com"))
        with pytest.raises(TypeError, match="takes SendEmail payloads, not dict"):
            await publisher.to(SEND_EMAIL).publish({"to": "x", "subject": "untyped caller"})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="takes Invoice payloads, not list"):
            await publisher.to(INVOICE).publish([7, 9.5])  # type: ignore[arg-type]
        await eventually(lambda: len(emails) == len(invoices) == len(signups) == 1)
    assert emails == [("app.send_email", SendEmail("ada@example.com", "hi"))]
    assert invoices == [{"number": 7, "total": 9.5}]
    assert signups == [Signup(email="b@example.com")]
    assert [c.routing_keys for c in pool.consumers] == [
        ("app.send_email",),
        ("app.invoice",),
        ("app.signup",),
    ]


def test_a_handler_typed_for_another_payload_is_refused_at_registration() -> None:
    pool = WorkerPool(namespace="contracts")

    async def untyped(ctx: Context, msg: Message[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="declares no payload type"):
        SEND_EMAIL.consumer(pool)(untyped)
    with pytest.raises(ConfigurationError, match=r"app\.signup.*declares payload type"):
        SIGNUP.consumer(pool)(untyped_invoice)
    assert pool.consumers == ()


async def untyped_invoice(ctx: Context, msg: Message[Invoice]) -> None: ...


def test_a_contract_refuses_a_pattern_or_an_unsupported_type() -> None:
    with pytest.raises(ConfigurationError):
        Contract("app.*", SendEmail)
    with pytest.raises(
        ConfigurationError, match="not a dataclass, a TypedDict, a pydantic model or a protobuf message"
    ):
        Contract("app.numbers", int)
