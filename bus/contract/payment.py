"""The payment service's commands and results."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bus.contract.base import Cents, Command, Currency, CustomerId, OrderId, PaymentMethod, Reason, Result, Window


class Authorize(Command):
    order_id: OrderId
    customer_id: CustomerId
    amount_cents: Cents
    currency: Currency
    method: PaymentMethod


class Refund(Command):
    order_id: OrderId
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
    status: Literal["AUTHORIZED", "DECLINED", "REFUNDED", "VOIDED"]
    decline_reason: str | None = None
    created_at: str
    updated_at: str


class PaymentList(Result):
    payments: list[Payment]
