"""Middleware: ``async def mw(ctx, msg, call_next)``, composed once per consumer, outermost first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from event.message import Message

CallNext = Callable[[], Awaitable[Any]]
Middleware = Callable[[Any, Message[Any], CallNext], Awaitable[Any]]
Step = Callable[[Any, Message[Any]], Awaitable[Any]]


def compose(middleware: Sequence[Middleware], endpoint: Step) -> Step:
    """One callable that runs ``middleware[0]`` first, each one reaching the next through ``call_next``.

    A middleware may run code before and after ``await call_next()``, swallow or translate its
    exceptions, or return without calling it to short-circuit the handler.
    """
    step = endpoint
    for outer in reversed(middleware):
        step = _link(outer, step)
    return step


def _link(outer: Middleware, inner: Step) -> Step:
    async def run(ctx: Any, msg: Message[Any]) -> Any:
        return await outer(ctx, msg, lambda: inner(ctx, msg))

    return run
