"""Rebuilding orders and their `orders.place` keys from the order service's own events; their sagas move
with them (bus.saga.replay, which also replays the engine's own events).

What comes back: every order row as the read endpoints show it; for each order
its saga, terminal for a terminal order, RUNNING or COMPENSATING for an
unfinished one, with step records as far as the events tell; and each
`orders.place` idempotency key with its request hash and stored reply, so a
repeat still finds its order and a different payload is still a CONFLICT.
An unfinished saga resumes at the next start (see bus.saga.replay for which
steps it sends again).

Not rebuilt: the keys of `orders.cancel` and of the operator endpoints (what
they do is idempotent by order). Nor do the participants rebuild their
idempotency tables: they are idempotent by order id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus import contract as c
from bus import idempotency, jsonb
from bus.ids import parse_iso
from bus.saga import replay as saga_replay
from bus.saga.replay import SagaReplay
from bus.saga.state import Reason, SagaStatus
from bus.settings import Settings
from bus.subjects import ORDERS_PLACE
from bus.unit import Tx
from order_svc import shipments as sh
from order_svc.fulfil import RETURN_ORDER, SHIP_ORDER, ReturnData, ShipData
from order_svc.saga import PLACE_ORDER, OrderLine, PlaceOrderData

SAGA = SagaReplay(PLACE_ORDER)
SHIP = SagaReplay(SHIP_ORDER)
RETURN = SagaReplay(RETURN_ORDER)

Project = Callable[[Tx, c.Event, float], None]


def apply(tx: Tx, event: c.Event) -> None:
    """Replay one order-service event onto the orders, sagas and idempotency tables."""
    if not (event.order_id and event.saga_id):
        return
    if SAGA.apply(tx, event) | SHIP.apply(tx, event) | RETURN.apply(tx, event):  # each moves its own runs
        return
    project = PROJECTIONS.get(event.type)
    if project is not None:
        project(tx, event, parse_iso(event.occurred_at))


def after_replay(tx: Tx, settings: Settings) -> None:
    """What the events cannot tell: the sagas' deadlines and the steps they send again (bus.saga.replay)."""
    saga_replay.after_replay(tx, settings.saga, SAGA, SHIP, RETURN)


# -- one projection per event type ------------------------------------------


def _created(tx: Tx, e: c.Event, at: float) -> None:
    assert e.order_id is not None and e.saga_id is not None
    d = e.data
    created_at, items, key = d.get("created_at") or e.occurred_at, jsonb.text(d["items"]), d.get("idempotency_key")
    cur = tx.execute(
        "INSERT INTO orders (order_id, customer_id, status, items, payment_method, saga_id, idempotency_key,"
        " created_at, updated_at) VALUES (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (e.order_id, d["customer_id"], items, d["payment_method"], e.saga_id, key, created_at, created_at),
    )
    if cur.rowcount == 0:
        return  # a repeat of the event
    lines = [OrderLine(sku=line["sku"], qty=line["qty"]) for line in d["items"]]
    data = PlaceOrderData(
        order_id=e.order_id, customer_id=d["customer_id"], items=lines, payment_method=d["payment_method"]
    )
    SAGA.created(tx, e.saga_id, e.order_id, data, parse_iso(created_at))
    digest = d.get("request_hash")
    if key and digest:
        placed = c.Order(
            order_id=e.order_id,
            customer_id=d["customer_id"],
            status=c.OrderStatus.PENDING,
            items=d["items"],
            payment_method=d["payment_method"],
            idempotency_key=key,
            created_at=created_at,
            updated_at=created_at,
        )
        idempotency.restore(tx, key, ORDERS_PLACE.subject, digest, placed, created_at)


def _cancel_requested(tx: Tx, e: c.Event, at: float) -> None:
    """The saga turns back at its next step boundary; a confirmed one was reopened in the same unit of work
    (its `order_compensating` follows)."""
    assert e.saga_id is not None
    tx.execute("UPDATE orders SET cancel_reason = ? WHERE order_id = ?", (e.data["reason"], e.order_id))
    SAGA.stop_asked(tx, e.saga_id, Reason.CANCELLED)


def _abort_requested(tx: Tx, e: c.Event, at: float) -> None:
    """An operator aborted the saga (any of the order's): it turns back at its next step boundary."""
    assert e.saga_id is not None
    SAGA.stop_asked(tx, e.saga_id, e.data["reason"])


# -- fulfilment (order_svc.shipments) ----------------------------------------


def _ship_requested(tx: Tx, e: c.Event, at: float) -> None:
    assert e.order_id is not None and e.saga_id is not None
    d = e.data
    tx.execute(
        "UPDATE orders SET status = 'SHIPPING', ship_saga_id = ?, ship_failure = NULL, updated_at = ?"
        " WHERE order_id = ?",
        (e.saga_id, d["updated_at"], e.order_id),
    )
    data = ShipData(
        order_id=e.order_id, shipment_id=e.saga_id, total_cents=d["total_cents"] or 0, currency=d["currency"] or ""
    )
    SHIP.created(tx, e.saga_id, e.order_id, data, at)


def _shipped(tx: Tx, e: c.Event, at: float) -> None:
    assert e.saga_id is not None
    if SHIP.status(tx, e.saga_id) != SagaStatus.RUNNING:
        return
    now = e.data["updated_at"]
    tx.execute(
        "UPDATE orders SET status = 'SHIPPED', shipped_at = ?, updated_at = ? WHERE order_id = ?",
        (now, now, e.order_id),
    )
    SHIP.completed(tx, e.saga_id, {step["step"]: step for step in e.data.get("steps", [])}, None, at)


def _ship_compensating(tx: Tx, e: c.Event, at: float) -> None:
    assert e.saga_id is not None
    if SHIP.status(tx, e.saga_id) != SagaStatus.RUNNING:
        return
    d = e.data
    tx.execute(
        "UPDATE orders SET ship_failure = ?, updated_at = ? WHERE order_id = ?",
        (d["reason"], d["updated_at"], e.order_id),
    )
    SHIP.turned_back(tx, e.saga_id, d["reason"], None, at, reopened=False)


def _ship_failed(tx: Tx, e: c.Event, at: float) -> None:
    assert e.saga_id is not None
    status = SHIP.status(tx, e.saga_id)
    if status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        return
    d = e.data
    tx.execute(
        "UPDATE orders SET status = 'CONFIRMED', ship_failure = ?, updated_at = ? WHERE order_id = ?",
        (d["reason"], d["updated_at"], e.order_id),
    )
    ended = SagaStatus.CANCELLED if d["reason"] == Reason.CANCELLED else SagaStatus.FAILED
    SHIP.ended(tx, e.saga_id, ended, d["reason"], at)


def _return_requested(tx: Tx, e: c.Event, at: float) -> None:
    assert e.order_id is not None and e.saga_id is not None
    d = e.data
    cur = tx.execute(
        "INSERT INTO order_returns (return_id, order_id, items, amount_cents, status, reason, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, 'RETURNING', ?, ?, ?) ON CONFLICT DO NOTHING",
        (
            e.saga_id,
            e.order_id,
            jsonb.text(d["items"]),
            d["amount_cents"],
            d.get("reason"),
            d["created_at"],
            d["created_at"],
        ),
    )
    if cur.rowcount == 0:
        return
    lines = [OrderLine(sku=line["sku"], qty=line["qty"]) for line in d["items"]]
    data = ReturnData(order_id=e.order_id, return_id=e.saga_id, items=lines, amount_cents=d["amount_cents"])
    RETURN.created(tx, e.saga_id, e.order_id, data, at)


def _returned(tx: Tx, e: c.Event, at: float) -> None:
    assert e.saga_id is not None
    if RETURN.status(tx, e.saga_id) != SagaStatus.RUNNING:
        return
    d = e.data
    now = d["updated_at"]
    tx.execute("UPDATE order_returns SET status = 'RETURNED', updated_at = ? WHERE return_id = ?", (now, e.saga_id))
    tx.execute(
        "UPDATE orders SET status = ?, refunded_cents = refunded_cents + ?, updated_at = ? WHERE order_id = ?",
        (d["status"], d["amount_cents"], now, e.order_id),
    )
    RETURN.completed(tx, e.saga_id, {step["step"]: step for step in d.get("steps", [])}, None, at)


def _return_compensating(tx: Tx, e: c.Event, at: float) -> None:
    assert e.saga_id is not None
    if RETURN.status(tx, e.saga_id) == SagaStatus.RUNNING:
        RETURN.turned_back(tx, e.saga_id, e.data["reason"], None, at, reopened=False)


def _return_failed(tx: Tx, e: c.Event, at: float) -> None:
    assert e.saga_id is not None
    if RETURN.status(tx, e.saga_id) not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        return
    d = e.data
    tx.execute(
        "UPDATE order_returns SET status = 'FAILED', failure_reason = ?, updated_at = ? WHERE return_id = ?",
        (d["reason"], d["updated_at"], e.saga_id),
    )
    ended = SagaStatus.CANCELLED if d["reason"] == Reason.CANCELLED else SagaStatus.FAILED
    RETURN.ended(tx, e.saga_id, ended, d["reason"], at)


def _compensating(tx: Tx, e: c.Event, at: float) -> None:
    assert e.saga_id is not None
    status = SAGA.status(tx, e.saga_id)
    if status not in (SagaStatus.RUNNING, SagaStatus.COMPLETED):
        return
    d = e.data
    reason = d["reason"]
    tx.execute(
        "UPDATE orders SET status = 'COMPENSATING', failure_reason = ?, updated_at = ? WHERE order_id = ?",
        (None if reason == Reason.CANCELLED else reason, d.get("updated_at") or e.occurred_at, e.order_id),
    )
    if "items" in d:
        tx.execute(
            "UPDATE orders SET items = ?, total_cents = ?, currency = ?, cancel_reason = ? WHERE order_id = ?",
            (jsonb.text(d["items"]), d["total_cents"], d["currency"], d["cancel_reason"], e.order_id),
        )
    # A confirmed order being cancelled turns back from its last step.
    reopened = status == SagaStatus.COMPLETED
    SAGA.turned_back(tx, e.saga_id, reason, _priced(tx, e.saga_id, d), at, reopened=reopened)


def _confirmed(tx: Tx, e: c.Event, at: float) -> None:
    assert e.saga_id is not None
    if SAGA.status(tx, e.saga_id) != SagaStatus.RUNNING:
        return
    d = e.data
    items, updated_at = jsonb.text(d["items"]) if d.get("items") else None, d.get("updated_at") or e.occurred_at
    tx.execute(
        "UPDATE orders SET status = 'CONFIRMED', items = coalesce(?, items), total_cents = ?, currency = ?,"
        " updated_at = ? WHERE order_id = ?",
        (items, d.get("total_cents"), d.get("currency"), updated_at, e.order_id),
    )
    told = {step["step"]: step for step in d.get("steps", [])}
    SAGA.completed(tx, e.saga_id, told, _priced(tx, e.saga_id, d), at)


def _finished(status: SagaStatus) -> Project:
    def project(tx: Tx, e: c.Event, at: float) -> None:
        assert e.saga_id is not None
        if SAGA.status(tx, e.saga_id) not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            return
        d = e.data
        updated_at = d.get("updated_at") or e.occurred_at
        if status == SagaStatus.FAILED:
            tx.execute(
                "UPDATE orders SET status = 'FAILED', failure_reason = ?, updated_at = ? WHERE order_id = ?",
                (d.get("reason"), updated_at, e.order_id),
            )
            reason = d.get("reason")
        else:
            tx.execute(
                "UPDATE orders SET status = 'CANCELLED', cancel_reason = ?, updated_at = ? WHERE order_id = ?",
                (d.get("reason"), updated_at, e.order_id),
            )
            reason = Reason.CANCELLED
        SAGA.ended(tx, e.saga_id, status, reason, at)

    return project


PROJECTIONS: dict[str, Project] = {
    "order_created": _created,
    "cancel_requested": _cancel_requested,
    "abort_requested": _abort_requested,
    "order_compensating": _compensating,
    "order_confirmed": _confirmed,
    "order_failed": _finished(SagaStatus.FAILED),
    "order_cancelled": _finished(SagaStatus.CANCELLED),
    sh.SHIP_REQUESTED: _ship_requested,
    sh.ORDER_SHIPPED: _shipped,
    sh.SHIP_COMPENSATING: _ship_compensating,
    sh.SHIP_FAILED: _ship_failed,
    sh.RETURN_REQUESTED: _return_requested,
    sh.ORDER_RETURNED: _returned,
    sh.RETURN_COMPENSATING: _return_compensating,
    sh.RETURN_FAILED: _return_failed,
}


def _priced(tx: Tx, saga_id: str, d: dict[str, Any]) -> PlaceOrderData | None:
    """The saga's data with the total the reservation fixed, when the event tells it."""
    data = SAGA.data(tx, saga_id)
    if data is not None and d.get("total_cents") is not None:
        data.total_cents, data.currency = d["total_cents"], d.get("currency")
    return data
