"""The place-order saga, declared as data: reserve stock, authorize payment, confirm."""

from __future__ import annotations

from typing import Any

from bus import contract as c
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


PLACE_ORDER = Saga(
    "place_order",
    Step(
        "reserve_stock",
        invoke=Action(INVENTORY_RESERVE, reserve_cmd),
        compensate=Action(INVENTORY_RELEASE, release_cmd),
        on_success=store.priced,
    ),
    Step(
        "authorize_payment",
        invoke=Action(PAYMENT_AUTHORIZE, authorize_cmd),
        compensate=Action(PAYMENT_REFUND, refund_cmd),
    ),
    Step("confirm_order", local=store.confirm),
    hooks=store.OrderHooks(),
)
