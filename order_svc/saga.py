"""The place-order saga, declared as data: reserve stock, authorize payment, confirm; and its data.

An order's story, in order: `orders.place` (order_svc.service) writes the order (order_svc.orders) and
creates this saga in one unit of work; the engine (bus.saga.engine) drives it step by step
(bus.saga.driver), each transition one unit of work (bus.saga.transitions) in which the order follows
through the hooks below and in order_svc.orders. A declined payment, say: `authorize_payment` fails with
PAYMENT_DECLINED, the saga turns back (`OrderHooks.on_compensating`: the order is COMPENSATING), the
reservation is released (`release_cmd`), and the saga ends FAILED (`OrderHooks.on_finished`).
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel, ConfigDict

from bus import contract as c
from bus.errors import Conflict, OmsError
from bus.saga.definition import Action, Saga, Step
from bus.saga.state import SagaRun
from bus.settings import Limits
from bus.subjects import INVENTORY_RELEASE, INVENTORY_RESERVE, PAYMENT_AUTHORIZE, PAYMENT_REFUND
from bus.unit import Tx
from order_svc import orders


class OrderLine(BaseModel):
    sku: str
    qty: int


class PlaceOrderData(BaseModel):
    """What the saga knows of its order: what was asked, and the total once the reservation priced it.

    Validated when the order was placed (a `c.PlaceOrder`); read back from the saga's row as it is, not
    against today's limits."""

    model_config = ConfigDict(extra="ignore")

    order_id: str
    customer_id: str
    items: list[OrderLine]
    payment_method: str
    total_cents: int | None = None
    currency: str | None = None

    @classmethod
    def placed(cls, order_id: str, cmd: c.PlaceOrder) -> PlaceOrderData:
        lines = [{"sku": line.sku, "qty": line.qty} for line in cmd.items]
        data = {
            "order_id": order_id,
            "customer_id": cmd.customer_id,
            "items": lines,
            "payment_method": cmd.payment_method,
        }
        return cls.model_validate(data)


def saga_of(order_id: str) -> str:
    """An order's saga id follows from its id, so a repeated request finds it without a lookup."""
    return "saga_" + order_id.removeprefix("ord_")


# -- the commands ------------------------------------------------------------------------------------------
# Built from data validated when the order was placed, against the limits in force then: validated again (in
# pydantic's core: faster here than `model_construct`, which runs in Python), but under limits that refuse
# nothing, so that a saga resumed after the limits changed still sends what its order asked for (constructed:
# `Limits` itself bounds what an operator may set).
AS_PLACED = {"limits": Limits.model_construct(max_items_per_order=sys.maxsize, max_qty_per_line=sys.maxsize)}


def reserve_cmd(d: PlaceOrderData) -> c.Reserve:
    lines = [{"sku": line.sku, "qty": line.qty} for line in d.items]
    return c.Reserve.model_validate({"order_id": d.order_id, "items": lines}, context=AS_PLACED)


def release_cmd(d: PlaceOrderData) -> c.Release:
    return c.Release(order_id=d.order_id, reason="saga compensation")


def authorize_cmd(d: PlaceOrderData) -> c.Authorize:
    return c.Authorize(
        order_id=d.order_id,
        customer_id=d.customer_id,
        amount_cents=d.total_cents,  # type: ignore[arg-type]  # set by the reservation, the step before
        currency=d.currency,  # type: ignore[arg-type]
        method=d.payment_method,  # type: ignore[arg-type]
    )


def refund_cmd(d: PlaceOrderData) -> c.Refund:
    return c.Refund(order_id=d.order_id, reason="saga compensation")


# -- what a participant's success must answer ------------------------------------------------------------


def reserved_as_asked(d: PlaceOrderData, reservation: c.Reservation) -> OmsError | None:
    """A reservation must hold, for this order, exactly the lines it asked for: fewer would oversell at
    fulfilment, more would hold stock nobody pays for."""
    asked = {line.sku: line.qty for line in d.items}
    held = {line.sku: line.qty for line in reservation.items}
    if reservation.order_id == d.order_id and reservation.status == "ACTIVE" and held == asked:
        return None
    return Conflict(
        f"inventory answered with a reservation of {held} for {reservation.order_id}; the order asked for {asked}",
        {"step": "reserve_stock", "asked": asked, "held": held},
    )


def charged_as_asked(d: PlaceOrderData, payment: c.Payment) -> OmsError | None:
    """An authorization must be of exactly the order's total, for this order: nothing less, nothing more."""
    asked = (d.order_id, "AUTHORIZED", d.total_cents, d.currency)
    got = (payment.order_id, payment.status, payment.amount_cents, payment.currency)
    if got == asked:
        return None
    return Conflict(
        f"payment answered with {got[1]} {got[2]} {got[3]} for {got[0]}; the order asked for {asked[2]} {asked[3]}",
        {"step": "authorize_payment", "amount_cents": got[2], "currency": got[3], "status": got[1]},
    )


# -- the order's side of the steps -------------------------------------------------------------------------


def priced(tx: Tx, run: SagaRun[PlaceOrderData], reservation: c.Reservation) -> None:
    """The reservation fixed the unit prices: the saga's data and the order's lines get them, and the total
    comes from them.

    The lines stay the ones the customer asked for (the check refuses a reservation of other lines before
    this runs), so the audit's invariant 2 compares the reservation with what was asked."""
    d = run.data
    d.total_cents, d.currency = reservation.total_cents, reservation.currency
    prices = {line.sku: line.unit_price_cents for line in reservation.items}
    items = [{"sku": line.sku, "qty": line.qty, "unit_price_cents": prices.get(line.sku)} for line in d.items]
    orders.priced(tx, run.ref, items, reservation.total_cents, reservation.currency)


def confirm_order(tx: Tx, run: SagaRun[PlaceOrderData]) -> None:
    steps: list[dict[str, Any]] = [
        {"step": r["step"], "attempts": r["attempts"], "duration_ms": round(r["duration_ms"] or 0, 2)}
        for r in run.invoked()
    ]
    orders.confirm(tx, run, run.data.total_cents, run.data.currency, steps)


PLACE_ORDER = Saga(
    "place_order",
    PlaceOrderData,
    Step(
        "reserve_stock",
        invoke=Action(INVENTORY_RESERVE, reserve_cmd),
        compensate=Action(INVENTORY_RELEASE, release_cmd),
        check=reserved_as_asked,
        on_success=priced,
    ),
    Step(
        "authorize_payment",
        invoke=Action(PAYMENT_AUTHORIZE, authorize_cmd),
        compensate=Action(PAYMENT_REFUND, refund_cmd),
        check=charged_as_asked,
    ),
    Step("confirm_order", local=confirm_order),
    hooks=orders.OrderHooks(),
)
