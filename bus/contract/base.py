"""What every model of the contract stands on: the field types, the order status, `Command` and `Result`,
order lines, and the window every list takes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from bus.ids import id_floor
from bus.money import MONEY_LIMIT_CENTS
from bus.settings import Limits

Sku = Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$", description="upper-case SKU")]
CustomerId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
OrderId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
SagaId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
Instant = Annotated[AwareDatetime, Field(description="RFC 3339 with a time zone, e.g. 2026-11-26T14:00:00Z")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Cents = Annotated[int, Field(ge=0, le=MONEY_LIMIT_CENTS)]
Reason = Annotated[str, Field(max_length=200)]
# A caller's id for one fulfilment act (a capture, a refund, a commit, a return): what makes a repeat of it
# a repeat. Saga-derived ids (`{saga_id}:{step}`) fit, hence `:` and `.`.
ActId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
PositiveCents = Annotated[int, Field(ge=1, le=MONEY_LIMIT_CENTS)]
PaymentMethod = Literal["card", "card_declined", "card_insufficient_funds"]


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    COMPENSATING = "COMPENSATING"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    # Past confirmation: the order's fulfilment (`orders.ship`, `orders.return`).
    SHIPPING = "SHIPPING"
    SHIPPED = "SHIPPED"
    PARTIALLY_RETURNED = "PARTIALLY_RETURNED"
    RETURNED = "RETURNED"


# What a shipped order may be: it is returned, never cancelled.
SHIPPED_STATUSES = frozenset({OrderStatus.SHIPPED, OrderStatus.PARTIALLY_RETURNED, OrderStatus.RETURNED})
# The statuses an order's placement ends in (and those it goes on to, which it reaches only once confirmed).
TERMINAL = frozenset({OrderStatus.CONFIRMED, OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.SHIPPING})
TERMINAL |= SHIPPED_STATUSES


class Command(BaseModel):
    """A request body: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Result(BaseModel):
    """A reply body; readers ignore fields they do not know."""

    model_config = ConfigDict(extra="ignore")


def _limits(info: ValidationInfo) -> Limits:
    ctx = info.context or {}
    return ctx.get("limits") or Limits()


class Line(Command):
    sku: Sku
    qty: int = Field(ge=1, description="at most OMS_LIMITS__MAX_QTY_PER_LINE (1000 by default)")

    @field_validator("qty")
    @classmethod
    def _qty_within_limit(cls, qty: int, info: ValidationInfo) -> int:
        cap = _limits(info).max_qty_per_line
        if qty > cap:
            raise ValueError(f"at most {cap} per line")
        return qty


class LinesCommand(Command):
    items: list[Line] = Field(min_length=1)

    @field_validator("items")
    @classmethod
    def _lines_within_limit(cls, items: list[Line], info: ValidationInfo) -> list[Line]:
        cap = _limits(info).max_items_per_order
        if len(items) > cap:
            raise ValueError(f"at most {cap} lines per order")
        skus = [line.sku for line in items]
        if len(set(skus)) != len(skus):
            raise ValueError("each SKU may appear once")
        return items


class PricedLine(Result):
    sku: str
    qty: int
    unit_price_cents: int | None = None


class Window(Command):
    """What every list takes beyond its filters: a page size, id cursors and a window of creation times.

    `before` and `after` are exclusive bounds on the list's key (an order or saga id), so a page's last
    key is the next page's cursor; `since` (inclusive) and `until` (exclusive) bound the creation time."""

    limit: int = Field(50, ge=1, le=1000)
    before: OrderId | None = Field(None, description="only keys below this one (page on, newest first)")
    after: OrderId | None = Field(None, description="only keys above this one (page on, oldest first)")
    since: Instant | None = Field(None, description="created at or after this time")
    until: Instant | None = Field(None, description="created before this time")

    # Fields validate in order: `after` sees `before`, `until` sees `since`.
    @field_validator("after")
    @classmethod
    def _after_below_before(cls, after: str | None, info: ValidationInfo) -> str | None:
        before = info.data.get("before")
        if after is not None and before is not None and after >= before:
            raise ValueError("must be below before (nothing lies between them)")
        return after

    @field_validator("until")
    @classmethod
    def _until_after_since(cls, until: Any, info: ValidationInfo) -> Any:
        since = info.data.get("since")
        if until is not None and since is not None and until <= since:
            raise ValueError("must be after since (nothing lies between them)")
        return until

    def key_range(self, prefix: str) -> tuple[str | None, str | None]:
        """The (lowest included, highest excluded) key for ids that begin with their creation time
        (`bus.ids.new_id`): `since` and `until` become bounds on the key, served by its index."""
        low = id_floor(prefix, self.since.timestamp()) if self.since is not None else None
        high = id_floor(prefix, self.until.timestamp()) if self.until is not None else None
        return low, high
