"""The order's life past confirmation, declared as data beside place-order: shipping it and taking units back.

Shipping (`orders.ship`, order_svc.service) turns a CONFIRMED order SHIPPING and starts SHIP_ORDER in one
unit of work: the reservation is committed (the stock leaves: `on_hand` and `reserved` drop together),
the payment is captured (the money is taken), the order is SHIPPED. Each step is undone if the saga has to
turn back (a capture refused for good, the deadline): the capture reversed, the commit undone; the order is
CONFIRMED again, with `ship_failure` saying why, and an operator may ship it again or cancel it. Both
undoings are order-tolerant: one that overtakes its step leaves a tombstone that refuses the step when it
arrives, so a shipment never ends with the stock gone and no money, or money and no shipment.

A return (`orders.return`) counts its units against the shipped ones in the order's own unit of work (two
returns racing for the same units: the second is refused), then RETURN_ORDER receives them (resellable
ones go back on hand) and refunds their value at the unit prices paid. A return only goes forward: its
steps cannot fail for a business reason (the order service checked the units), so they are retried until
they are done, through any outage, under a deadline of a day.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from bus import contract as c
from bus.errors import Conflict, OmsError
from bus.saga.definition import Action, RetryPolicy, Saga, Step
from bus.saga.state import SagaRun
from bus.subjects import (
    INVENTORY_COMMIT,
    INVENTORY_RECEIVE_RETURN,
    INVENTORY_UNCOMMIT,
    PAYMENT_CAPTURE,
    PAYMENT_REFUND,
    PAYMENT_REVERSE_CAPTURE,
)
from bus.unit import Tx
from order_svc import shipments
from order_svc.saga import OrderLine

RETURN_DEADLINE_S = 24 * 3600.0
UNTIL_DONE = RetryPolicy(maximum_attempts=0)


class ShipData(BaseModel):
    """What a shipment knows of its order: the id its steps are named by, and the total to capture."""

    model_config = ConfigDict(extra="ignore")

    order_id: str
    shipment_id: str
    total_cents: int
    currency: str


class ReturnData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order_id: str
    return_id: str
    items: list[OrderLine]
    amount_cents: int


def _steps(run: SagaRun[Any]) -> list[dict[str, Any]]:
    return [
        {"step": r["step"], "attempts": r["attempts"], "duration_ms": round(r["duration_ms"] or 0, 2)}
        for r in run.invoked()
    ]


# -- shipping ----------------------------------------------------------------------------------------------


def commit_cmd(d: ShipData) -> c.Commit:
    return c.Commit(order_id=d.order_id, commit_id=d.shipment_id)


def uncommit_cmd(d: ShipData) -> c.Uncommit:
    return c.Uncommit(order_id=d.order_id, commit_id=d.shipment_id, reason="shipment compensation")


def capture_cmd(d: ShipData) -> c.Capture:
    return c.Capture(order_id=d.order_id, capture_id=d.shipment_id, amount_cents=d.total_cents)


def reverse_capture_cmd(d: ShipData) -> c.ReverseCapture:
    return c.ReverseCapture(order_id=d.order_id, capture_id=d.shipment_id, reason="shipment compensation")


def committed_as_asked(d: ShipData, reservation: c.Reservation) -> OmsError | None:
    if (reservation.order_id, reservation.status, reservation.commit_id) == (d.order_id, "COMMITTED", d.shipment_id):
        return None
    return Conflict(
        f"inventory answered {reservation.status} ({reservation.commit_id}) for {reservation.order_id}; "
        f"the shipment asked for a commit by {d.shipment_id}",
        {"step": "commit_stock", "status": reservation.status},
    )


def captured_as_asked(d: ShipData, payment: c.Payment) -> OmsError | None:
    asked = (d.order_id, "CAPTURED", d.total_cents, d.currency, d.shipment_id)
    got = (payment.order_id, payment.status, payment.captured_cents, payment.currency, payment.capture_id)
    if got == asked:
        return None
    return Conflict(
        f"payment answered {got[1]} {got[2]} {got[3]} for {got[0]}; the shipment asked to capture {asked[2]}",
        {"step": "capture_payment", "status": got[1], "captured_cents": got[2]},
    )


def mark_shipped(tx: Tx, run: SagaRun[ShipData]) -> None:
    shipments.shipped(tx, run, _steps(run))


SHIP_ORDER = Saga(
    "ship_order",
    ShipData,
    Step(
        "commit_stock",
        invoke=Action(INVENTORY_COMMIT, commit_cmd),
        compensate=Action(INVENTORY_UNCOMMIT, uncommit_cmd),
        check=committed_as_asked,
    ),
    Step(
        "capture_payment",
        invoke=Action(PAYMENT_CAPTURE, capture_cmd),
        compensate=Action(PAYMENT_REVERSE_CAPTURE, reverse_capture_cmd),
        check=captured_as_asked,
    ),
    Step("mark_shipped", local=mark_shipped),
    hooks=shipments.ShipHooks(),
)


# -- returns -----------------------------------------------------------------------------------------------


def receive_cmd(d: ReturnData) -> c.ReceiveReturn:
    lines = [{"sku": line.sku, "qty": line.qty} for line in d.items]
    return c.ReceiveReturn.model_validate({"order_id": d.order_id, "return_id": d.return_id, "items": lines})


def refund_cmd(d: ReturnData) -> c.Refund:
    return c.Refund(order_id=d.order_id, refund_id=d.return_id, amount_cents=d.amount_cents, reason="return")


def received_as_asked(d: ReturnData, receipt: c.ReturnReceipt) -> OmsError | None:
    asked = {line.sku: line.qty for line in d.items}
    got = {line.sku: line.qty for line in receipt.items}
    if (receipt.order_id, receipt.return_id, got) == (d.order_id, d.return_id, asked):
        return None
    return Conflict(
        f"inventory received {got} for {receipt.order_id}; the return was of {asked}",
        {"step": "receive_return", "asked": asked, "received": got},
    )


def refunded_as_asked(d: ReturnData, payment: c.Payment) -> OmsError | None:
    if payment.order_id == d.order_id and payment.status in ("PARTIALLY_REFUNDED", "REFUNDED"):
        return None
    return Conflict(
        f"payment answered {payment.status} for {payment.order_id}; the return asked for a refund",
        {"step": "refund_payment", "status": payment.status},
    )


def mark_returned(tx: Tx, run: SagaRun[ReturnData]) -> None:
    shipments.returned(tx, run, _steps(run))


RETURN_ORDER = Saga(
    "return_order",
    ReturnData,
    Step(
        "receive_return",
        invoke=Action(INVENTORY_RECEIVE_RETURN, receive_cmd),
        check=received_as_asked,
        retry=UNTIL_DONE,
    ),
    Step("refund_payment", invoke=Action(PAYMENT_REFUND, refund_cmd), check=refunded_as_asked, retry=UNTIL_DONE),
    Step("mark_returned", local=mark_returned),
    hooks=shipments.ReturnHooks(),
    deadline_s=RETURN_DEADLINE_S,
)

SAGAS = (SHIP_ORDER, RETURN_ORDER)
