"""Orders in SQLite: their rows, the changes of them and their events, and the hooks through which an
order's status follows its saga (`order_svc.saga`)."""

from __future__ import annotations

from typing import Any

from bus import contract as c
from bus import jsonb
from bus.errors import Conflict, NotFound
from bus.idempotency import request_hash
from bus.ids import now_iso
from bus.migrations import Migrations
from bus.saga.state import Reason, SagaRun, SagaStatus
from bus.unit import Tx, in_window, where

# What `orders.place` leaves out of its idempotency hash: how long to wait is not part of the order.
PLACE_HASH_EXCLUDES = frozenset({"wait_ms"})

MIGRATIONS = Migrations(
    "orders",
    (
        """
    CREATE TABLE orders (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        status TEXT NOT NULL,
        items TEXT NOT NULL,
        payment_method TEXT NOT NULL,
        total_cents INTEGER,
        currency TEXT,
        failure_reason TEXT,
        cancel_reason TEXT,
        saga_id TEXT NOT NULL,
        idempotency_key TEXT UNIQUE,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX orders_status ON orders (status, order_id);
    CREATE INDEX orders_customer ON orders (customer_id, order_id);
    """,
        # Fulfilment (order_svc.shipments): the shipment's saga and outcome, the refunds, the returns.
        """
    ALTER TABLE orders ADD COLUMN ship_saga_id TEXT;
    ALTER TABLE orders ADD COLUMN shipped_at TEXT;
    ALTER TABLE orders ADD COLUMN ship_failure TEXT;
    ALTER TABLE orders ADD COLUMN refunded_cents INTEGER NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0);
    CREATE TABLE order_returns (
        return_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL REFERENCES orders (order_id),
        items TEXT NOT NULL,
        amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
        status TEXT NOT NULL CHECK (status IN ('RETURNING', 'RETURNED', 'FAILED')),
        reason TEXT,
        failure_reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX order_returns_by_order ON order_returns (order_id, return_id);
    """,
    ),
)


def to_order(row: Any) -> c.Order:
    """An order's row as the contract's order (the row's saga id is left out: `saga` is the saga's view)."""
    return c.Order.model_validate({**dict(row), "items": jsonb.loads(row["items"])})


def create(
    tx: Tx, order_id: str, saga_id: str, cmd: c.PlaceOrder, key: str | None = None, digest: str | None = None
) -> c.Order:
    now = now_iso()
    items = [line.model_dump() for line in cmd.items]
    tx.execute(
        "INSERT INTO orders (order_id, customer_id, status, items, payment_method, saga_id, idempotency_key,"
        " created_at, updated_at) VALUES (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?)",
        (order_id, cmd.customer_id, jsonb.text(items), cmd.payment_method, saga_id, key, now, now),
    )
    # created_at and the key's request hash let a rebuild by replay restore the row and the key exactly.
    data = {
        "customer_id": cmd.customer_id,
        "items": items,
        "payment_method": cmd.payment_method,
        "idempotency_key": key,
        "request_hash": (digest or request_hash(cmd, PLACE_HASH_EXCLUDES)) if key else None,
        "created_at": now,
    }
    tx.emit("order_created", order_id, data, order_id=order_id, saga_id=saga_id)
    return c.Order(
        order_id=order_id,
        customer_id=cmd.customer_id,
        status=c.OrderStatus.PENDING,
        items=items,
        payment_method=cmd.payment_method,
        idempotency_key=key,
        created_at=now,
        updated_at=now,
    )


def get(tx: Tx, order_id: str) -> Any:
    row = tx.one("SELECT * FROM orders WHERE order_id = ?", (order_id,))
    if row is None:
        raise NotFound(f"no order {order_id}", {"order_id": order_id})
    return row


def listing(tx: Tx, q: c.ListOrders) -> list[c.Order]:
    clause, params = where(
        ("status = ?", q.status.value if q.status else None),
        ("customer_id = ?", q.customer_id or None),
        *in_window(q, "order_id", prefix="ord"),
    )
    # Order ids begin with their creation time, so id order is creation order.
    rows = tx.all(f"SELECT * FROM orders{clause} ORDER BY order_id DESC LIMIT ?", (*params, q.limit))
    return [to_order(r) for r in rows]


def priced(tx: Tx, order_id: str, items: list[dict[str, Any]], total_cents: int, currency: str) -> None:
    """The reservation fixed the unit prices: the order's lines get them, and its total comes from them."""
    tx.execute(
        "UPDATE orders SET items = ?, total_cents = ?, currency = ?, updated_at = ? WHERE order_id = ?",
        (jsonb.text(items), total_cents, currency, now_iso(), order_id),
    )


def confirm(
    tx: Tx,
    run: SagaRun[Any],
    total_cents: int | None,
    currency: str | None,
    steps: list[dict[str, Any]],
) -> None:
    """The order is CONFIRMED; its event carries its pricing and how each step went."""
    now = now_iso()
    row = tx.one(
        "UPDATE orders SET status = 'CONFIRMED', updated_at = ? WHERE order_id = ? RETURNING *", (now, run.ref)
    )
    confirmed = {
        "total_cents": total_cents,
        "currency": currency,
        "items": jsonb.loads(row["items"]) if row else None,  # priced: no order event records the pricing
        "steps": steps,
        "updated_at": now,
    }
    tx.emit("order_confirmed", run.ref, confirmed, order_id=run.ref, saga_id=run.saga_id)
    if row is not None:
        run.result = to_order(row)  # the placing request answers with it, without reading again


class OrderHooks:
    """The order's status follows its saga."""

    def on_stop_requested(self, tx: Tx, run: SagaRun[Any], reason: str, note: str | None) -> None:
        """An operator's abort has its event here, with the operator's note; a cancel has its own
        (`cancel_requested`), written in the same unit of work."""
        if reason != Reason.CANCELLED:
            data = {"reason": reason, "note": note}
            tx.emit("abort_requested", run.ref, data, order_id=run.ref, saga_id=run.saga_id)

    def on_compensating(self, tx: Tx, run: SagaRun[Any], reason: str) -> None:
        now = now_iso()
        row = tx.one(
            "UPDATE orders SET status = 'COMPENSATING', failure_reason = ?, updated_at = ? WHERE order_id = ?"
            " RETURNING items, total_cents, currency, cancel_reason",
            (None if reason == Reason.CANCELLED else reason, now, run.ref),
        )
        data: dict[str, Any] = {"reason": reason, "updated_at": now}
        if row is not None:
            # The pricing and the cancel request have no events of their own: a rebuild learns them here.
            data |= {
                "items": jsonb.loads(row["items"]),
                "total_cents": row["total_cents"],
                "currency": row["currency"],
                "cancel_reason": row["cancel_reason"],
            }
        tx.emit("order_compensating", run.ref, data, order_id=run.ref, saga_id=run.saga_id)

    def on_finished(self, tx: Tx, run: SagaRun[Any], status: str, reason: str | None) -> None:
        now = now_iso()
        if status == SagaStatus.CANCELLED:
            row = tx.one(
                "UPDATE orders SET status = 'CANCELLED', updated_at = ? WHERE order_id = ? RETURNING *", (now, run.ref)
            )
            data = {"reason": row["cancel_reason"] if row else None, "updated_at": now}
            tx.emit("order_cancelled", run.ref, data, order_id=run.ref, saga_id=run.saga_id)
        else:
            row = tx.one(
                "UPDATE orders SET status = 'FAILED', failure_reason = ?, updated_at = ? WHERE order_id = ?"
                " RETURNING *",
                (reason, now, run.ref),
            )
            data = {"reason": reason, "updated_at": now}
            tx.emit("order_failed", run.ref, data, order_id=run.ref, saga_id=run.saga_id)
        if row is None:
            raise NotFound(f"no order {run.ref}", {"order_id": run.ref})
        run.result = to_order(row)


def request_cancel(tx: Tx, cmd: c.CancelOrder) -> c.Order:
    """Check that the order can be cancelled and note why; the saga then turns back (see `wants_cancel`)."""
    row = get(tx, cmd.order_id)
    status = row["status"]
    if status == c.OrderStatus.CANCELLED or row["cancel_reason"] is not None:
        return to_order(row)
    if status == c.OrderStatus.FAILED:
        raise Conflict(
            f"order {cmd.order_id} already FAILED ({row['failure_reason']}); nothing to cancel",
            {"status": status},
        )
    if status == c.OrderStatus.SHIPPING or status in c.SHIPPED_STATUSES:
        raise Conflict(
            f"order {cmd.order_id} is {status}: a shipped order is not cancelled, its units are returned "
            f"(orders.return, `oms order return {cmd.order_id}`)",
            {"status": status},
        )
    if status == c.OrderStatus.COMPENSATING:
        raise Conflict(
            f"order {cmd.order_id} is being compensated after {row['failure_reason']}; it will end FAILED",
            {"status": status},
        )
    reason = cmd.reason or "cancelled by request"
    now = now_iso()
    tx.execute("UPDATE orders SET cancel_reason = ?, updated_at = ? WHERE order_id = ?", (reason, now, cmd.order_id))
    tx.emit(
        "cancel_requested",
        cmd.order_id,
        {"reason": reason, "status": status, "updated_at": now},
        order_id=cmd.order_id,
        saga_id=row["saga_id"],
    )
    return to_order(get(tx, cmd.order_id))


def wants_cancel(order: c.Order) -> bool:
    """A cancel was asked for and the saga has not turned back yet."""
    return order.cancel_reason is not None and order.status in (c.OrderStatus.PENDING, c.OrderStatus.CONFIRMED)
