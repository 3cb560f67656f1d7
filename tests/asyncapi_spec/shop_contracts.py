"""The contracts a producer service and a consumer service of the shop share (neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypedDict

from pydantic import BaseModel

from event import Contract


@dataclass
class Address:
    street: str
    city: str


@dataclass
class OrderPlaced:
    """An order was placed and paid."""

    order_id: int
    items: list[str]
    ship_to: Address
    gift: bool = False
    tags: list[str] = field(default_factory=list)


class Refund(TypedDict):
    order_id: int
    amount: float
    reason: Literal["damaged", "late", "other"]


class Signup(BaseModel):
    """A user signed up."""

    email: str
    referrer: str | None = None


ORDER_PLACED = Contract("shop.order.placed", OrderPlaced, description="An order was placed and paid.")
REFUND = Contract("shop.refund", Refund)
SIGNUP = Contract("shop.user.signup", Signup)
