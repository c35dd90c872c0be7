"""The payment service's commands and results: authorize, capture and its reversal, refund, void."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from bus.contract.base import (
    ActId,
    Cents,
    Command,
    Currency,
    CustomerId,
    OrderId,
    PaymentMethod,
    PositiveCents,
    Reason,
    Result,
    Window,
)


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


class PaymentQuery(Window):
    """By order id, ascending (`order: desc` for newest first); `since`/`until` bound the payment's time."""

    status: PaymentStatus | None = None
    customer_id: CustomerId | None = None
    limit: int = Field(1000, ge=1, le=1000)
    order: Literal["asc", "desc"] = "asc"


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
