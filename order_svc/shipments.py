"""Shipments and returns in the order's rows: asked for, done, or turned back, each with its event; and the
hooks through which the order follows its shipment's and its returns' sagas (`order_svc.fulfil`)."""

from __future__ import annotations

from typing import Any

from bus import contract as c
from bus import jsonb
from bus.errors import Conflict, InvalidRequest
from bus.ids import now_iso
from bus.saga.state import SagaRun
from bus.unit import Tx
from order_svc import orders

# Event types (subject `events.orders.<type>.<order_id>`, each with the saga's id).
SHIP_REQUESTED = "ship_requested"
ORDER_SHIPPED = "order_shipped"
SHIP_COMPENSATING = "ship_compensating"
SHIP_FAILED = "ship_failed"
RETURN_REQUESTED = "return_requested"
ORDER_RETURNED = "order_returned"
RETURN_COMPENSATING = "return_compensating"
RETURN_FAILED = "return_failed"


# -- shipping ----------------------------------------------------------------------------------------------


def request_ship(tx: Tx, cmd: c.ShipOrder, shipment_id: str) -> tuple[c.Order, bool]:
    """The order turns SHIPPING, unless it is shipping or shipped already (then it is answered as it is);
    True when this request started a shipment. A cancel asked for first wins; a ship asked for first makes
    a later cancel refused."""
    row = orders.get(tx, cmd.order_id)
    status = row["status"]
    if status == c.OrderStatus.SHIPPING or status in c.SHIPPED_STATUSES:
        return with_returns(tx, row), False
    if status != c.OrderStatus.CONFIRMED or row["cancel_reason"] is not None:
        why = "a cancel was asked for" if row["cancel_reason"] is not None else f"it is {status}"
        raise Conflict(f"order {cmd.order_id} cannot ship: {why}; only a CONFIRMED order ships", {"status": status})
    now = now_iso()
    tx.execute(
        "UPDATE orders SET status = 'SHIPPING', ship_saga_id = ?, ship_failure = NULL, updated_at = ?"
        " WHERE order_id = ?",
        (shipment_id, now, cmd.order_id),
    )
    data = {"total_cents": row["total_cents"], "currency": row["currency"], "updated_at": now}
    tx.emit(SHIP_REQUESTED, cmd.order_id, data, order_id=cmd.order_id, saga_id=shipment_id)
    return with_returns(tx, orders.get(tx, cmd.order_id)), True


def shipped(tx: Tx, run: SagaRun[Any], steps: list[dict[str, Any]]) -> None:
    now = now_iso()
    tx.execute(
        "UPDATE orders SET status = 'SHIPPED', shipped_at = ?, updated_at = ? WHERE order_id = ?", (now, now, run.ref)
    )
    tx.emit(ORDER_SHIPPED, run.ref, {"steps": steps, "updated_at": now}, order_id=run.ref, saga_id=run.saga_id)
    run.result = with_returns(tx, orders.get(tx, run.ref))


class ShipHooks:
    """A shipment that turns back leaves the order CONFIRMED, saying why, for an operator to act on."""

    def on_stop_requested(self, tx: Tx, run: SagaRun[Any], reason: str, note: str | None) -> None:
        data = {"reason": reason, "note": note}
        tx.emit("abort_requested", run.ref, data, order_id=run.ref, saga_id=run.saga_id)

    def on_compensating(self, tx: Tx, run: SagaRun[Any], reason: str) -> None:
        now = now_iso()
        tx.execute("UPDATE orders SET ship_failure = ?, updated_at = ? WHERE order_id = ?", (reason, now, run.ref))
        data = {"reason": reason, "updated_at": now}
        tx.emit(SHIP_COMPENSATING, run.ref, data, order_id=run.ref, saga_id=run.saga_id)

    def on_finished(self, tx: Tx, run: SagaRun[Any], status: str, reason: str | None) -> None:
        now = now_iso()
        why = reason or str(status)
        tx.execute(
            "UPDATE orders SET status = 'CONFIRMED', ship_failure = ?, updated_at = ? WHERE order_id = ?",
            (why, now, run.ref),
        )
        tx.emit(SHIP_FAILED, run.ref, {"reason": why, "updated_at": now}, order_id=run.ref, saga_id=run.saga_id)
        run.result = with_returns(tx, orders.get(tx, run.ref))


# -- returns -----------------------------------------------------------------------------------------------


def returnable(tx: Tx, row: Any) -> dict[str, int]:
    """Units of each SKU shipped and not taken back (returns under way count as taken)."""
    left = {line["sku"]: line["qty"] for line in jsonb.loads(row["items"])}
    for found in tx.all(
        "SELECT items FROM order_returns WHERE order_id = ? AND status != 'FAILED'", (row["order_id"],)
    ):
        for line in jsonb.loads(found["items"]):
            left[line["sku"]] -= line["qty"]
    return left


def request_return(tx: Tx, cmd: c.ReturnOrder, return_id: str) -> tuple[list[dict[str, Any]], int]:
    """Count the units against what shipped and is not returned yet, and record the return: its lines at the
    unit prices paid, and their value. Two returns of the same units: the second is refused here."""
    row = orders.get(tx, cmd.order_id)
    status = row["status"]
    if status not in c.SHIPPED_STATUSES:
        raise Conflict(f"order {cmd.order_id} is {status}; only a shipped order takes returns", {"status": status})
    left = returnable(tx, row)
    prices = {line["sku"]: line["unit_price_cents"] or 0 for line in jsonb.loads(row["items"])}
    asked = {line.sku: line.qty for line in cmd.items} if cmd.items else {s: q for s, q in left.items() if q > 0}
    if not asked:
        raise Conflict(f"order {cmd.order_id} has nothing left to return", {"status": status})
    for i, (sku, qty) in enumerate(asked.items()):
        if sku not in left:
            raise InvalidRequest(
                f"invalid request: items[{i}].sku: order {cmd.order_id} has no line of {sku}",
                {"field": f"items[{i}].sku"},
            )
        if qty > left[sku]:
            raise Conflict(
                f"order {cmd.order_id}: {qty} of {sku} cannot be returned, {left[sku]} left to return",
                {"sku": sku, "requested": qty, "returnable": left[sku]},
            )
    lines = [{"sku": sku, "qty": qty, "unit_price_cents": prices[sku]} for sku, qty in asked.items()]
    amount = sum(line["qty"] * line["unit_price_cents"] for line in lines)
    now = now_iso()
    tx.execute(
        "INSERT INTO order_returns (return_id, order_id, items, amount_cents, status, reason, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, 'RETURNING', ?, ?, ?)",
        (return_id, cmd.order_id, jsonb.text(lines), amount, cmd.reason, now, now),
    )
    data = {"items": lines, "amount_cents": amount, "reason": cmd.reason, "created_at": now}
    tx.emit(RETURN_REQUESTED, cmd.order_id, data, order_id=cmd.order_id, saga_id=return_id)
    return lines, amount


def returned(tx: Tx, run: SagaRun[Any], steps: list[dict[str, Any]]) -> None:
    """The units are back and their value refunded: the order is RETURNED once nothing is left to return."""
    now = now_iso()
    ret = tx.one(
        "UPDATE order_returns SET status = 'RETURNED', updated_at = ? WHERE return_id = ? RETURNING amount_cents",
        (now, run.saga_id),
    )
    amount = ret["amount_cents"] if ret else 0
    row = orders.get(tx, run.ref)
    done = all(qty == 0 for qty in _unreturned(tx, row).values())
    status = c.OrderStatus.RETURNED if done else c.OrderStatus.PARTIALLY_RETURNED
    tx.execute(
        "UPDATE orders SET status = ?, refunded_cents = refunded_cents + ?, updated_at = ? WHERE order_id = ?",
        (status.value, amount, now, run.ref),
    )
    data = {"status": status.value, "amount_cents": amount, "steps": steps, "updated_at": now}
    tx.emit(ORDER_RETURNED, run.ref, data, order_id=run.ref, saga_id=run.saga_id)
    run.result = with_returns(tx, orders.get(tx, run.ref))


def _unreturned(tx: Tx, row: Any) -> dict[str, int]:
    """Units of each SKU not returned by a finished return."""
    left = {line["sku"]: line["qty"] for line in jsonb.loads(row["items"])}
    for found in tx.all(
        "SELECT items FROM order_returns WHERE order_id = ? AND status = 'RETURNED'", (row["order_id"],)
    ):
        for line in jsonb.loads(found["items"]):
            left[line["sku"]] -= line["qty"]
    return left


class ReturnHooks:
    """A return that cannot go on (a participant refused it for good, which the order's own check should
    have made impossible) ends FAILED, and its units count as not returned."""

    def on_stop_requested(self, tx: Tx, run: SagaRun[Any], reason: str, note: str | None) -> None:
        data = {"reason": reason, "note": note}
        tx.emit("abort_requested", run.ref, data, order_id=run.ref, saga_id=run.saga_id)

    def on_compensating(self, tx: Tx, run: SagaRun[Any], reason: str) -> None:
        data = {"reason": reason, "updated_at": now_iso()}
        tx.emit(RETURN_COMPENSATING, run.ref, data, order_id=run.ref, saga_id=run.saga_id)

    def on_finished(self, tx: Tx, run: SagaRun[Any], status: str, reason: str | None) -> None:
        now = now_iso()
        why = reason or str(status)
        tx.execute(
            "UPDATE order_returns SET status = 'FAILED', failure_reason = ?, updated_at = ? WHERE return_id = ?",
            (why, now, run.saga_id),
        )
        tx.emit(RETURN_FAILED, run.ref, {"reason": why, "updated_at": now}, order_id=run.ref, saga_id=run.saga_id)
        run.result = with_returns(tx, orders.get(tx, run.ref))


# -- reading -----------------------------------------------------------------------------------------------


def returns_of(tx: Tx, order_id: str) -> list[c.OrderReturn]:
    rows = tx.all("SELECT * FROM order_returns WHERE order_id = ? ORDER BY return_id", (order_id,))
    return [c.OrderReturn.model_validate({**dict(r), "items": jsonb.loads(r["items"])}) for r in rows]


def with_returns(tx: Tx, row: Any) -> c.Order:
    order = orders.to_order(row)
    order.returns = returns_of(tx, row["order_id"])
    return order
