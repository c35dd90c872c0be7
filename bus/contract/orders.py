"""The order service's commands and results: orders, and its sagas as an operator sees them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bus.contract.base import (
    Command,
    CustomerId,
    Line,
    LinesCommand,
    OrderId,
    OrderStatus,
    PaymentMethod,
    PricedLine,
    Reason,
    Result,
    SagaId,
    Window,
)


class PlaceOrder(LinesCommand):
    customer_id: CustomerId
    payment_method: PaymentMethod = "card"
    wait_ms: int = Field(10_000, ge=0, le=60_000)


class GetOrder(Command):
    order_id: OrderId


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
    saga: SagaView | None = None  # its saga (the return's id is the saga's), in `orders.get`


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
    ship_saga: SagaView | None = None  # the last shipment's saga, in `orders.get`
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
