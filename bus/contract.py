"""The wire contract: every command, result and event as a pydantic model.

Commands are strict (no coercion, no unknown fields); the limits that are
settings (`Limits`) reach validation through the pydantic context, so the
same model serves every deployment.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bus.money import MONEY_LIMIT_CENTS
from bus.settings import Limits

Sku = Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$", description="upper-case SKU")]
CustomerId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
OrderId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
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


TERMINAL = frozenset({OrderStatus.CONFIRMED, OrderStatus.FAILED, OrderStatus.CANCELLED})


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
    qty: int = Field(ge=1, le=1_000_000)

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


# -- orders ---------------------------------------------------------------


class PlaceOrder(LinesCommand):
    customer_id: CustomerId
    payment_method: PaymentMethod = "card"
    wait_ms: int = Field(10_000, ge=0, le=60_000)


class GetOrder(Command):
    order_id: OrderId


class ListOrders(Command):
    status: OrderStatus | None = None
    customer_id: CustomerId | None = None
    limit: int = Field(50, ge=1, le=1000)
    before: OrderId | None = Field(None, description="page on: orders older than this order id")

    @field_validator("status", mode="before")
    @classmethod
    def _status_from_text(cls, value: Any) -> Any:
        return OrderStatus(value) if isinstance(value, str) and value in OrderStatus.__members__ else value


class CancelOrder(Command):
    order_id: OrderId
    reason: Reason | None = None


class OrderEventsQuery(Command):
    order_id: OrderId


class SagaQuery(Command):
    status: Literal["RUNNING", "COMPENSATING", "COMPLETED", "FAILED", "CANCELLED"] | None = None
    stuck: bool = False
    limit: int = Field(50, ge=1, le=1000)


class SagaRef(Command):
    saga_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class SagaAbort(SagaRef):
    reason: Reason | None = None


class PricedLine(Result):
    sku: str
    qty: int
    unit_price_cents: int | None = None


class StepRecord(Result):
    step: str
    action: str
    status: str
    attempts: int
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: float | None = None
    uncertain: bool = False
    last_error: dict[str, Any] | None = None


class SagaView(Result):
    saga_id: str
    name: str
    ref: str | None = None
    status: str
    failure_reason: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    step: str | None = None
    compensating: bool = False
    attempts: int = 0
    deadline_at: str | None = None
    next_retry_at: str | None = None
    last_error: dict[str, Any] | None = None
    stuck: bool = False
    steps: list[StepRecord] = []


class Order(Result):
    order_id: str
    customer_id: str
    status: OrderStatus
    items: list[PricedLine]
    payment_method: str
    total_cents: int | None = None
    currency: str | None = None
    failure_reason: str | None = None
    cancel_reason: str | None = None
    idempotency_key: str | None = None
    created_at: str
    updated_at: str
    saga: SagaView | None = None


class SagaList(Result):
    sagas: list[SagaView]


class OrderList(Result):
    orders: list[Order]


class EventList(Result):
    order_id: str
    events: list[dict[str, Any]]


# -- inventory ------------------------------------------------------------


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


class ReservationQuery(Command):
    order_id: OrderId | None = None
    status: ReservationStatus | None = None
    limit: int = Field(1000, ge=1, le=1000)
    after: OrderId | None = Field(None, description="page on: order ids after this one, ascending")


class CheckLine(Result):
    sku: str
    requested: int
    available: int


class Availability(Result):
    available: bool
    lines: list[CheckLine]


class ReservedLine(PricedLine):
    returned_qty: int = 0  # units of the line received back (a COMMITTED reservation's)

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


class Stock(Result):
    products: list[Product]


class ReservationList(Result):
    reservations: list[Reservation]


# -- payment --------------------------------------------------------------


class Authorize(Command):
    order_id: OrderId
    customer_id: CustomerId
    amount_cents: Cents
    currency: Currency
    method: PaymentMethod


PaymentStatus = Literal["AUTHORIZED", "DECLINED", "CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED", "VOIDED"]


class Capture(Command):
    """Take the money: all of the authorization, or `amount_cents` of it."""

    order_id: OrderId
    capture_id: ActId
    amount_cents: PositiveCents | None = None


class ReverseCapture(Command):
    order_id: OrderId
    capture_id: ActId
    reason: Reason | None = None


class Refund(Command):
    """Without an amount: void the authorization (as `payment.void`). With `refund_id` and `amount_cents`:
    give back that much of what was captured."""

    order_id: OrderId
    reason: Reason | None = None
    refund_id: ActId | None = None
    amount_cents: PositiveCents | None = Field(None, validate_default=True)

    @field_validator("amount_cents")
    @classmethod
    def _with_its_refund_id(cls, amount: int | None, info: ValidationInfo) -> int | None:
        if "refund_id" not in info.data:
            return amount  # refund_id failed: its own error says so
        if amount is None and info.data["refund_id"] is not None:
            raise ValueError("a refund with a refund_id needs its amount_cents")
        if amount is not None and info.data["refund_id"] is None:
            raise ValueError("a refund of an amount needs its refund_id (what makes a repeat a repeat)")
        return amount


class Void(Command):
    order_id: OrderId
    reason: Reason | None = None


class GetPayment(Command):
    order_id: OrderId


class PaymentQuery(Command):
    status: PaymentStatus | None = None
    limit: int = Field(1000, ge=1, le=1000)
    after: OrderId | None = Field(None, description="page on: order ids after this one, ascending")


class Payment(Result):
    order_id: str
    customer_id: str | None = None
    amount_cents: int
    currency: str
    method: str | None = None
    status: PaymentStatus
    decline_reason: str | None = None
    created_at: str
    updated_at: str
    captured_cents: int = 0
    refunded_cents: int = 0
    capture_id: str | None = None  # what captured it, while something is captured


class PaymentList(Result):
    payments: list[Payment]


# -- fault injection ------------------------------------------------------


class ChaosSet(Command):
    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(0, ge=0, le=60_000)
    latency_jitter_ms: int = Field(0, ge=0, le=60_000)
    drop_reply_rate: float = Field(0.0, ge=0.0, le=1.0)
    endpoints: list[Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # a 64-bit integer, as every JSON tool can write
    # A rate written without a decimal point (0, 1) is fine as it is: a strict float takes an integer, and
    # refuses one out of range by its bounds (no conversion first, which overflowed for a huge integer).


class ChaosQuery(Command):
    pass


class ChaosState(Result):
    service: str
    error_rate: float = 0.0
    latency_ms: int = 0
    latency_jitter_ms: int = 0
    drop_reply_rate: float = 0.0
    endpoints: list[str] | None = None
    seed: int | None = None
    active: bool = False


# -- health ---------------------------------------------------------------


class HealthQuery(Command):
    pass


class Health(Result):
    """What `oms status` shows of one service instance beyond `$SRV.STATS`."""

    service: str
    version: str
    pid: int
    started_at: str
    uptime_s: float
    in_flight: int
    outbox_backlog: int
    outbox_lag_s: float
    events_published: int
    db_commits: int
    db_units: int
    breakers: dict[str, str] = {}
    sagas_in_flight: int | None = None
    counts: dict[str, int] = {}
    chaos: ChaosState


# -- events ---------------------------------------------------------------


class Event(Result):
    """The body of every message in OMS_EVENTS."""

    event_id: str
    type: str
    occurred_at: str
    service: str
    order_id: str | None = None
    saga_id: str | None = None
    data: dict[str, Any] = {}


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every model in the contract, by name (for `oms schema`)."""
    models = [m for m in globals().values() if isinstance(m, type) and issubclass(m, BaseModel)]
    return {
        m.__name__: m.model_json_schema()
        for m in models
        if m not in (Command, Result, BaseModel) and m.__module__ == __name__
    }
