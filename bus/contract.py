"""The wire contract: every command, result and event as a pydantic model.

Commands are strict (no coercion, no unknown fields); the limits that are
settings (`Limits`) reach validation through the pydantic context, so the
same model serves every deployment.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bus.ids import id_floor
from bus.money import MONEY_LIMIT_CENTS
from bus.settings import Limits

# The contract's version: `api` in every service's `$SRV.INFO` metadata and in `oms status`. Raise it when a
# reader of the old contract could misread the new one (a field removed or changed); new optional fields
# and new subjects keep it.
API_VERSION = "1"

Sku = Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$", description="upper-case SKU")]
CustomerId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
OrderId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
SagaId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
Instant = Annotated[AwareDatetime, Field(description="RFC 3339 with a time zone, e.g. 2026-11-26T14:00:00Z")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Cents = Annotated[int, Field(ge=0, le=MONEY_LIMIT_CENTS)]
Reason = Annotated[str, Field(max_length=200)]
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


# The statuses an order's placement ends in (and those it goes on to, which it reaches only once confirmed).
TERMINAL = frozenset(
    {
        OrderStatus.CONFIRMED,
        OrderStatus.FAILED,
        OrderStatus.CANCELLED,
        OrderStatus.SHIPPING,
        OrderStatus.SHIPPED,
        OrderStatus.PARTIALLY_RETURNED,
        OrderStatus.RETURNED,
    }
)
# What a shipped order may be: it is returned, never cancelled.
SHIPPED_STATUSES = frozenset({OrderStatus.SHIPPED, OrderStatus.PARTIALLY_RETURNED, OrderStatus.RETURNED})


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


# -- orders ---------------------------------------------------------------


class PlaceOrder(LinesCommand):
    customer_id: CustomerId
    payment_method: PaymentMethod = "card"
    wait_ms: int = Field(10_000, ge=0, le=60_000)


class GetOrder(Command):
    order_id: OrderId


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


class ListOrders(Window):
    """Newest first."""

    status: OrderStatus | None = None
    customer_id: CustomerId | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _status_from_text(cls, value: Any) -> Any:
        return OrderStatus(value) if isinstance(value, str) and value in OrderStatus.__members__ else value


class CancelOrder(Command):
    order_id: OrderId
    reason: Reason | None = None


class OrderEventsQuery(Command):
    order_id: OrderId


class ShipOrder(Command):
    """Ship a CONFIRMED order: its reservation is committed (the stock leaves) and its payment captured."""

    order_id: OrderId
    wait_ms: int = Field(10_000, ge=0, le=60_000)


class ReturnOrder(Command):
    """Take back some or all of a shipped order's units (`items` left out: all not yet returned); their value
    at the unit prices paid is refunded."""

    order_id: OrderId
    items: list[Line] | None = Field(None, min_length=1)
    reason: Reason | None = None
    wait_ms: int = Field(10_000, ge=0, le=60_000)

    @field_validator("items")
    @classmethod
    def _one_line_per_sku(cls, items: list[Line] | None) -> list[Line] | None:
        if items is not None:
            skus = [line.sku for line in items]
            if len(set(skus)) != len(skus):
                raise ValueError("each SKU may appear once")
        return items


class SagaQuery(Window):
    """Newest first; `before`/`after` are saga ids, `customer_id` the customer of the saga's order."""

    status: Literal["RUNNING", "COMPENSATING", "COMPLETED", "FAILED", "CANCELLED"] | None = None
    stuck: bool = False
    customer_id: CustomerId | None = None


class SagaRef(Command):
    saga_id: SagaId


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

    @model_validator(mode="after")
    def _turned_back(self) -> SagaView:
        """A forward step the saga turned back from (an abort, a cancel, its deadline) is ABANDONED: its
        record would otherwise keep saying RUNNING or RETRYING for a saga that no longer tries it. Whether
        it may have taken effect stays in `uncertain` (it is compensated either way)."""
        if self.status != "RUNNING":
            for step in self.steps:
                if step.action == "invoke" and step.status in ("RUNNING", "RETRYING"):
                    step.status = "ABANDONED"
        return self


class OrderReturn(Result):
    """One return of a shipped order's units; RETURNING while its saga runs."""

    return_id: str
    items: list[PricedLine]
    amount_cents: int
    status: Literal["RETURNING", "RETURNED", "FAILED"]
    reason: str | None = None
    failure_reason: str | None = None
    created_at: str
    updated_at: str


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
    # Fulfilment: the shipment's saga, when it shipped, why the last attempt to ship did not; the returns.
    ship_saga_id: str | None = None
    shipped_at: str | None = None
    ship_failure: str | None = None
    refunded_cents: int = 0
    returns: list[OrderReturn] = []


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
    status: Literal["ACTIVE", "RELEASED", "COMMITTED"]
    items: list[PricedLine]
    total_cents: int
    currency: str
    created_at: str
    released_at: str | None = None
    commit_id: str | None = None


class Commit(Command):
    order_id: OrderId
    commit_id: OrderId


class Uncommit(Command):
    order_id: OrderId
    commit_id: OrderId
    reason: Reason | None = None


class ReceiveReturn(LinesCommand):
    order_id: OrderId
    return_id: OrderId


class ReturnedLine(Result):
    sku: str
    qty: int
    restocked: bool


class ReturnReceipt(Result):
    order_id: str
    return_id: str
    items: list[ReturnedLine]


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


# -- payment --------------------------------------------------------------


class Authorize(Command):
    order_id: OrderId
    customer_id: CustomerId
    amount_cents: Cents
    currency: Currency
    method: PaymentMethod


class Refund(Command):
    order_id: OrderId
    reason: Reason | None = None
    refund_id: OrderId | None = None
    amount_cents: Cents | None = None


class Capture(Command):
    order_id: OrderId
    capture_id: OrderId
    amount_cents: Cents | None = None


class ReverseCapture(Command):
    order_id: OrderId
    capture_id: OrderId
    reason: Reason | None = None


class GetPayment(Command):
    order_id: OrderId


class PaymentQuery(Window):
    """By order id, ascending (`order: desc` for newest first); `since`/`until` bound the payment's time."""

    status: Literal["AUTHORIZED", "DECLINED", "REFUNDED", "VOIDED"] | None = None
    customer_id: CustomerId | None = None
    limit: int = Field(1000, ge=1, le=1000)
    order: Literal["asc", "desc"] = "asc"


class Payment(Result):
    order_id: str
    customer_id: str | None = None
    amount_cents: int
    currency: str
    method: str | None = None
    status: Literal["AUTHORIZED", "DECLINED", "CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED", "VOIDED"]
    decline_reason: str | None = None
    captured_cents: int = 0
    refunded_cents: int = 0
    capture_id: str | None = None
    created_at: str
    updated_at: str


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


def schemas(limits: Limits | None = None) -> dict[str, dict[str, Any]]:
    """JSON Schema of every model in the contract, by name (for `oms schema`), with the input limits in force
    (`limits`, the defaults when None): the bounds a schema states are the ones the services enforce."""
    limits = limits or Limits()
    models = [m for m in globals().values() if isinstance(m, type) and issubclass(m, BaseModel)]
    found = {
        m.__name__: m.model_json_schema()
        for m in models
        if m not in (Command, Result, BaseModel) and m.__module__ == __name__
    }
    for schema in found.values():
        for definition in (schema, *schema.get("$defs", {}).values()):
            props = definition.get("properties", {})
            if definition.get("title") == "Line" and "qty" in props:
                props["qty"]["maximum"] = limits.max_qty_per_line
                props["qty"].pop("description", None)
            if "items" in props and definition.get("additionalProperties") is False:  # a command's lines
                props["items"]["maxItems"] = limits.max_items_per_order
    return found
