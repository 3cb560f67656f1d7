"""Checked by mypy --strict in tests/unit/test_typing.py: typed handlers are accepted as written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from event import Context, Message, Publisher, WorkerPool

pool = WorkerPool(namespace="typed")


@dataclass
class SendEmail:
    to: str
    subject: str


class MailContext(Context):
    user: str | None = None


@pool.consumer("app.send_email", context=MailContext, rate_limit="20/s")
async def send_email(ctx: MailContext, msg: Message[SendEmail]) -> None:
    subject: str = msg.body.subject
    print(ctx.user, subject)


@pool.consumer("app.send_email.copy", queue="copy")
async def with_payload(ctx: Context, msg: Message[Any], payload: SendEmail) -> None:
    print(payload.to)


@pool.consumer("app.sync")
def blocking(ctx: Context, msg: Message[Any]) -> None:
    print(msg.body)


async def publish(publisher: Publisher) -> None:
    await publisher.publish("app.send_email", SendEmail("a@b.c", "hi"))
