"""Payment storage: the schema and the units of work that authorize and refund, each with its event."""

from __future__ import annotations

import sqlite3
from typing import Any

from bus import contract as c
from bus.errors import Conflict, NotFound, PaymentDeclined
from bus.ids import now_iso
from bus.migrations import Migrations
from bus.unit import Rejected, Tx, in_window, where

MIGRATIONS = Migrations(
    "payment",
    (
        """
    CREATE TABLE payments (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT,
        amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
        currency TEXT NOT NULL,
        method TEXT,
        status TEXT NOT NULL CHECK (status IN ('AUTHORIZED', 'DECLINED', 'REFUNDED', 'VOIDED')),
        decline_reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX payments_by_status ON payments (status, order_id);
    """,
    ),
)

# Event types this service emits (subject `events.payment.<type>.<order_id>`); data is the full row.
PAYMENT_AUTHORIZED = "payment_authorized"
PAYMENT_DECLINED = "payment_declined"
PAYMENT_REFUNDED = "payment_refunded"
PAYMENT_VOIDED = "payment_voided"

# Deterministic decline rules: the method names the outcome, so demos and tests can pick it.
DECLINING_METHODS = {"card_declined": "card_declined", "card_insufficient_funds": "insufficient_funds"}
OVER_LIMIT = "amount_over_limit"

_COLUMNS = (
    "order_id",
    "customer_id",
    "amount_cents",
    "currency",
    "method",
    "status",
    "decline_reason",
    "created_at",
    "updated_at",
)


def decline_reason(cmd: c.Authorize, limit_cents: int) -> str | None:
    """Why this authorization is declined, or None when it is approved."""
    if cmd.method in DECLINING_METHODS:
        return DECLINING_METHODS[cmd.method]
    if cmd.amount_cents > limit_cents:
        return OVER_LIMIT
    return None


def authorize(tx: Tx, cmd: c.Authorize, limit_cents: int) -> c.Payment | Rejected:
    """At most one payment per order: a repeat answers as the first did; refused after a refund."""
    row = tx.one("SELECT * FROM payments WHERE order_id = ?", (cmd.order_id,))
    if row is not None:
        return _repeat(row, cmd)
    now = now_iso()
    reason = decline_reason(cmd, limit_cents)
    payment = c.Payment(
        order_id=cmd.order_id,
        customer_id=cmd.customer_id,
        amount_cents=cmd.amount_cents,
        currency=cmd.currency,
        method=cmd.method,
        status="DECLINED" if reason else "AUTHORIZED",
        decline_reason=reason,
        created_at=now,
        updated_at=now,
    )
    _insert(tx, payment)
    data = payment.model_dump(mode="json")
    if reason is not None:
        # Rejected, not raised: the declined payment is recorded (and its event kept), then answered 402.
        tx.emit(PAYMENT_DECLINED, cmd.order_id, data, order_id=cmd.order_id)
        return Rejected(_declined(cmd.order_id, reason))
    tx.emit(PAYMENT_AUTHORIZED, cmd.order_id, data, order_id=cmd.order_id)
    return payment


def refund(tx: Tx, cmd: c.Refund, currency: str) -> c.Payment:
    """Undo whatever was done for the order, if anything: idempotent and order-tolerant."""
    row = tx.one("SELECT * FROM payments WHERE order_id = ?", (cmd.order_id,))
    now = now_iso()
    extra: dict[str, Any] = {"reason": cmd.reason, "tombstone": False}
    if row is None:
        # The refund overtook (or replaced) the authorize: a VOIDED tombstone refuses a late one.
        payment = c.Payment(
            order_id=cmd.order_id,
            amount_cents=0,
            currency=currency,
            status="VOIDED",
            created_at=now,
            updated_at=now,
        )
        _insert(tx, payment)
        event, extra["tombstone"] = PAYMENT_VOIDED, True
    elif row["status"] in ("REFUNDED", "VOIDED"):
        return _payment(row)
    else:
        # A declined payment charged nothing, so it is voided rather than refunded.
        status, event = ("REFUNDED", PAYMENT_REFUNDED) if row["status"] == "AUTHORIZED" else ("VOIDED", PAYMENT_VOIDED)
        tx.execute("UPDATE payments SET status = ?, updated_at = ? WHERE order_id = ?", (status, now, cmd.order_id))
        payment = _payment(row).model_copy(update={"status": status, "updated_at": now})
    tx.emit(event, cmd.order_id, payment.model_dump(mode="json") | extra, order_id=cmd.order_id)
    return payment


def get(tx: Tx, cmd: c.GetPayment) -> c.Payment:
    row = tx.one("SELECT * FROM payments WHERE order_id = ?", (cmd.order_id,))
    if row is None:
        raise NotFound(f"no payment for order {cmd.order_id}", {"order_id": cmd.order_id})
    return _payment(row)


def payments(tx: Tx, cmd: c.PaymentQuery) -> c.PaymentList:
    """One page by order id (`cmd.order`), within the cursors and the window of `created_at`; tombstones are
    included (VOIDED, amount 0). The window and the customer filter the walk of the primary key: an index
    for them would cost every authorization one more B-tree write for a listing operators rarely ask."""
    clause, params = where(
        ("status = ?", cmd.status),
        ("customer_id = ?", cmd.customer_id),
        *in_window(cmd, "order_id", created="created_at"),
    )
    direction = "DESC" if cmd.order == "desc" else "ASC"
    rows = tx.all(f"SELECT * FROM payments{clause} ORDER BY order_id {direction} LIMIT ?", (*params, cmd.limit))
    return c.PaymentList(payments=[_payment(row) for row in rows])


def _repeat(row: sqlite3.Row, cmd: c.Authorize) -> c.Payment | Rejected:
    """A repeat answers as the first authorize did, once what it reports is in the stream (hence Rejected,
    not raised: the caller waits for the events committed before it)."""
    status = row["status"]
    if status == "DECLINED":
        return Rejected(_declined(cmd.order_id, row["decline_reason"]))
    if status in ("REFUNDED", "VOIDED"):
        return Rejected(
            Conflict(
                f"payment for order {cmd.order_id} was {status.lower()}; a late authorize is refused",
                {"order_id": cmd.order_id, "status": status},
            )
        )
    if (row["amount_cents"], row["currency"]) != (cmd.amount_cents, cmd.currency):
        return Rejected(
            Conflict(
                f"order {cmd.order_id} is already authorized for {row['amount_cents']} {row['currency']}",
                {"order_id": cmd.order_id, "amount_cents": row["amount_cents"], "currency": row["currency"]},
            )
        )
    return _payment(row)


def _declined(order_id: str, reason: str) -> PaymentDeclined:
    return PaymentDeclined(f"payment for order {order_id} declined: {reason}", {"reason": reason})


def _insert(tx: Tx, payment: c.Payment) -> None:
    tx.execute(
        f"INSERT INTO payments ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
        [getattr(payment, col) for col in _COLUMNS],
    )


def _payment(row: sqlite3.Row) -> c.Payment:
    return c.Payment(**{col: row[col] for col in _COLUMNS})
