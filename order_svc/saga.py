"""The place-order saga, declared as data: reserve stock, authorize payment, confirm."""

from __future__ import annotations

from typing import Any

from bus import contract as c
from bus.errors import Conflict, OmsError
from bus.saga import Action, Saga, Step
from bus.subjects import INVENTORY_RELEASE, INVENTORY_RESERVE, PAYMENT_AUTHORIZE, PAYMENT_REFUND
from order_svc import store


# The invoke payloads are plain dicts: the data was validated when the order was placed, and a
# model built only to be serialized again is work for nothing.
def reserve_cmd(data: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": data["order_id"], "items": data["items"]}


def release_cmd(data: dict[str, Any]) -> c.Release:
    return c.Release(order_id=data["order_id"], reason="saga compensation")


def authorize_cmd(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "order_id": data["order_id"],
        "customer_id": data["customer_id"],
        "amount_cents": data["total_cents"],
        "currency": data["currency"],
        "method": data["payment_method"],
    }


def refund_cmd(data: dict[str, Any]) -> c.Refund:
    return c.Refund(order_id=data["order_id"], reason="saga compensation")


def reserved_as_asked(data: dict[str, Any], reservation: dict[str, Any]) -> OmsError | None:
    """A reservation must hold, for this order, exactly the lines it asked for: fewer would oversell at
    fulfilment, more would hold stock nobody pays for."""
    asked = {line["sku"]: line["qty"] for line in data["items"]}
    held = {line.get("sku"): line.get("qty") for line in reservation.get("items") or ()}
    if reservation.get("order_id") == data["order_id"] and reservation.get("status") == "ACTIVE" and held == asked:
        return None
    return Conflict(
        f"inventory answered with a reservation of {held} for {reservation.get('order_id')}; "
        f"the order asked for {asked}",
        {"step": "reserve_stock", "asked": asked, "held": held},
    )


def charged_as_asked(data: dict[str, Any], payment: dict[str, Any]) -> OmsError | None:
    """An authorization must be of exactly the order's total, for this order: nothing less, nothing more."""
    asked = (data["order_id"], "AUTHORIZED", data["total_cents"], data["currency"])
    got = (payment.get("order_id"), payment.get("status"), payment.get("amount_cents"), payment.get("currency"))
    if got == asked:
        return None
    return Conflict(
        f"payment answered with {got[1]} {got[2]} {got[3]} for {got[0]}; the order asked for {asked[2]} {asked[3]}",
        {"step": "authorize_payment", "amount_cents": got[2], "currency": got[3], "status": got[1]},
    )


PLACE_ORDER = Saga(
    "place_order",
    Step(
        "reserve_stock",
        invoke=Action(INVENTORY_RESERVE, reserve_cmd),
        compensate=Action(INVENTORY_RELEASE, release_cmd),
        on_success=store.priced,
        check=reserved_as_asked,
    ),
    Step(
        "authorize_payment",
        invoke=Action(PAYMENT_AUTHORIZE, authorize_cmd),
        compensate=Action(PAYMENT_REFUND, refund_cmd),
        check=charged_as_asked,
    ),
    Step("confirm_order", local=store.confirm),
    hooks=store.OrderHooks(),
)
