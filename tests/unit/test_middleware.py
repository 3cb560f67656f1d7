"""Middleware composition: order, before/after, short-circuit, swallowing and translating errors."""

from __future__ import annotations

from typing import Any

import pytest

from event import Message
from event.middleware import CallNext, compose


def message() -> Message[Any]:
    return Message(
        routing_key="app.a",
        body={},
        raw=b"{}",
        headers={},
        message_id="m1",
        timestamp=None,
        attempt=1,
        redelivered=False,
        queue="ns:q",
        delivery_routing_key="app.a",
        exchange="hutch",
    )


async def test_middleware_runs_outermost_first_around_the_handler() -> None:
    trail: list[str] = []

    def named(name: str) -> Any:
        async def mw(ctx: Any, msg: Message[Any], call_next: CallNext) -> Any:
            trail.append(f"{name}>")
            result = await call_next()
            trail.append(f"<{name}")
            return result

        return mw

    async def handler(ctx: Any, msg: Message[Any]) -> str:
        trail.append("handler")
        return "done"

    chain = compose([named("a"), named("b")], handler)
    assert await chain(object(), message()) == "done"
    assert trail == ["a>", "b>", "handler", "<b", "<a"]


async def test_middleware_shares_the_context_with_the_handler() -> None:
    class Ctx:
        user: str | None = None

    async def attach(ctx: Ctx, msg: Message[Any], call_next: CallNext) -> Any:
        ctx.user = "ada"
        return await call_next()

    seen: list[str | None] = []

    async def handler(ctx: Ctx, msg: Message[Any]) -> None:
        seen.append(ctx.user)

    await compose([attach], handler)(Ctx(), message())
    assert seen == ["ada"]


async def test_middleware_can_short_circuit() -> None:
    called = False

    async def stop(ctx: Any, msg: Message[Any], call_next: CallNext) -> Any:
        return "skipped"

    async def handler(ctx: Any, msg: Message[Any]) -> None:
        nonlocal called
        called = True

    assert await compose([stop], handler)(None, message()) == "skipped"
    assert not called


async def test_middleware_can_swallow_or_translate_errors() -> None:
    async def boom(ctx: Any, msg: Message[Any]) -> None:
        raise KeyError("missing")

    async def swallow(ctx: Any, msg: Message[Any], call_next: CallNext) -> Any:
        try:
            return await call_next()
        except KeyError:
            return "swallowed"

    async def translate(ctx: Any, msg: Message[Any], call_next: CallNext) -> Any:
        try:
            return await call_next()
        except KeyError as exc:
            raise ValueError("translated") from exc

    assert await compose([swallow], boom)(None, message()) == "swallowed"
    with pytest.raises(ValueError, match="translated"):
        await compose([translate], boom)(None, message())


async def test_no_middleware_calls_the_handler_directly() -> None:
    async def handler(ctx: Any, msg: Message[Any]) -> str:
        return msg.routing_key

    assert compose([], handler) is handler
    assert await compose([], handler)(None, message()) == "app.a"
