"""The inventory service's commands and results: stock, checks, reservations, and their fulfilment (commit,
its undoing, returns received)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from bus.contract.base import (
    ActId,
    Cents,
    Command,
    LinesCommand,
    OrderId,
    PricedLine,
    Reason,
    Result,
    Sku,
    Window,
)


class CheckStock(LinesCommand):
    pass


class Reserve(LinesCommand):
    order_id: OrderId


class Release(Command):
    order_id: OrderId
    reason: Reason | None = None


class StockQuery(Command):
    sku: Sku | None = None


ProductName = Annotated[str, Field(min_length=1, max_length=100)]
ReservationStatus = Literal["ACTIVE", "RELEASED", "COMMITTED"]


class Restock(Command):
    sku: Sku
    qty: int = Field(ge=1, le=1_000_000)
    name: ProductName | None = None
    price_cents: Cents | None = None
    resellable: bool | None = Field(None, description="whether returned units go back on hand (default: as it is)")


class UpdateProduct(Command):
    """A product's attributes, its stock untouched; at least one of them."""

    sku: Sku
    name: ProductName | None = None
    price_cents: Cents | None = None
    resellable: bool | None = Field(None, validate_default=True)

    @field_validator("resellable")
    @classmethod
    def _something_to_change(cls, resellable: bool | None, info: ValidationInfo) -> bool | None:
        if resellable is None and info.data.get("name") is None and info.data.get("price_cents") is None:
            if {"name", "price_cents"} <= info.data.keys():  # (when a field failed, its own error says so)
                raise ValueError("give at least one of name, price_cents, resellable")
        return resellable


class Commit(Command):
    """Ship the order's reservation: its units leave on_hand and reserved."""

    order_id: OrderId
    commit_id: ActId


class Uncommit(Command):
    order_id: OrderId
    commit_id: ActId
    reason: Reason | None = None


class ReceiveReturn(LinesCommand):
    order_id: OrderId
    return_id: ActId


class ReservationQuery(Window):
    """By order id, ascending (`order: desc` for newest first); `since`/`until` bound the reservation's time."""

    order_id: OrderId | None = None
    status: ReservationStatus | None = None
    limit: int = Field(1000, ge=1, le=1000)
    order: Literal["asc", "desc"] = "asc"


class CheckLine(Result):
    sku: str
    requested: int
    available: int


class Availability(Result):
    available: bool
    lines: list[CheckLine]


class ReservedLine(PricedLine):
    returned_qty: int = 0  # units of the line received back (a COMMITTED reservation's)
    restocked_qty: int = 0  # of those, the units put back on hand (a resellable SKU's)

    @model_validator(mode="before")
    @classmethod
    def _from_a_priced_line(cls, value: Any) -> Any:
        # A reservation's lines were PricedLines before returns were counted: those still make one.
        return value.model_dump() if isinstance(value, PricedLine) and not isinstance(value, cls) else value


class Reservation(Result):
    order_id: str
    status: ReservationStatus
    items: list[ReservedLine]
    total_cents: int
    currency: str
    created_at: str
    released_at: str | None = None
    commit_id: str | None = None  # what committed it, while it is COMMITTED
    committed_at: str | None = None


class Uncommitted(Result):
    """A commit undone, or a tombstone for one that had not happened (a late commit with its id is refused)."""

    order_id: str
    commit_id: str
    tombstone: bool = False
    reservation: Reservation | None = None  # None when inventory knows no reservation of the order


class ReturnedLine(Result):
    sku: str
    qty: int
    restocked: bool  # back on hand (a resellable SKU), or not


class ReturnReceipt(Result):
    order_id: str
    return_id: str
    items: list[ReturnedLine]
    received_at: str


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
    resellable: bool = True
    # Every unit ever restocked: on_hand is this, less the units of committed reservations, plus the units
    # of returns put back on hand (what the audit checks, with this total from the SKU's last restock event).
    restocked_units: int = 0


class Stock(Result):
    products: list[Product]


class ReservationList(Result):
    reservations: list[Reservation]
