"""The inventory service's commands and results: stock, checks and reservations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bus.contract.base import Cents, Command, LinesCommand, OrderId, PricedLine, Reason, Result, Sku, Window


class CheckStock(LinesCommand):
    pass


class Reserve(LinesCommand):
    order_id: OrderId


class Release(Command):
    order_id: OrderId
    reason: Reason | None = None


class StockQuery(Command):
    sku: Sku | None = None


class Restock(Command):
    sku: Sku
    qty: int = Field(ge=1, le=1_000_000)
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    price_cents: Cents | None = None


class ReservationQuery(Window):
    """By order id, ascending (`order: desc` for newest first); `since`/`until` bound the reservation's time."""

    order_id: OrderId | None = None
    status: Literal["ACTIVE", "RELEASED"] | None = None
    limit: int = Field(1000, ge=1, le=1000)
    order: Literal["asc", "desc"] = "asc"


class CheckLine(Result):
    sku: str
    requested: int
    available: int


class Availability(Result):
    available: bool
    lines: list[CheckLine]


class Reservation(Result):
    order_id: str
    status: Literal["ACTIVE", "RELEASED"]
    items: list[PricedLine]
    total_cents: int
    currency: str
    created_at: str
    released_at: str | None = None


class Released(Result):
    order_id: str
    status: Literal["RELEASED"] = "RELEASED"
    tombstone: bool = False


class Product(Result):
    sku: str
    name: str
    price_cents: int
    on_hand: int
    reserved: int
    available: int


class Stock(Result):
    products: list[Product]


class ReservationList(Result):
    reservations: list[Reservation]
