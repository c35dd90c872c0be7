"""Payment storage: the schema, the payment rows, and the units of work that authorize and void, each with its
event. Capture and its reversal live in payment_svc.capture, refunds of an amount in payment_svc.refunds."""

from __future__ import annotations

import sqlite3

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
        # Fulfilment: capture, capture reversals and refunds of an amount. SQLite cannot alter a CHECK, so the
        # table is made again. A REFUNDED row from before (an authorization given back: nothing was captured)
        # keeps its status with nothing captured or refunded; such a row is what VOIDED is now.
        """
    CREATE TABLE payments_v2 (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT,
        amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
        currency TEXT NOT NULL,
        method TEXT,
        status TEXT NOT NULL CHECK (
            status IN ('AUTHORIZED', 'DECLINED', 'CAPTURED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'VOIDED')
        ),
        decline_reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        captured_cents INTEGER NOT NULL DEFAULT 0 CHECK (captured_cents BETWEEN 0 AND amount_cents),
        refunded_cents INTEGER NOT NULL DEFAULT 0 CHECK (refunded_cents BETWEEN 0 AND captured_cents),
        capture_id TEXT,
        CHECK ((capture_id IS NULL) = (captured_cents = 0)),
        CHECK (status NOT IN ('CAPTURED', 'PARTIALLY_REFUNDED') OR captured_cents > 0)
    );
    INSERT INTO payments_v2 (order_id, customer_id, amount_cents, currency, method, status, decline_reason,
        created_at, updated_at)
        SELECT order_id, customer_id, amount_cents, currency, method, status, decline_reason, created_at, updated_at
        FROM payments;
    DROP TABLE payments;
    ALTER TABLE payments_v2 RENAME TO payments;
    CREATE INDEX payments_by_status ON payments (status, order_id);
    CREATE TABLE refunds (
        refund_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        amount_cents INTEGER NOT NULL CHECK (amount_cents >= 1),
        created_at TEXT NOT NULL
    );
    CREATE INDEX refunds_by_order ON refunds (order_id);
    CREATE TABLE capture_reversals (
        order_id TEXT NOT NULL,
        capture_id TEXT NOT NULL,
        tombstone INTEGER NOT NULL CHECK (tombstone IN (0, 1)),
        reason TEXT,
        reversed_at TEXT NOT NULL,
        PRIMARY KEY (order_id, capture_id)
    ) WITHOUT ROWID;
    """,
    ),
)

# Event types this service emits (subject `events.payment.<type>.<order_id>`); data is the full row.
PAYMENT_AUTHORIZED = "payment_authorized"
PAYMENT_DECLINED = "payment_declined"
PAYMENT_VOIDED = "payment_voided"
PAYMENT_CAPTURED = "payment_captured"
PAYMENT_CAPTURE_REVERSED = "payment_capture_reversed"  # data also: `reversal` {capture_id, tombstone, ...}
PAYMENT_REFUNDED = "payment_refunded"  # data also: `refund` {refund_id, amount_cents}

SETTLED = frozenset({"VOIDED", "REFUNDED"})  # what a void answers as it is
CAPTURED = frozenset({"CAPTURED", "PARTIALLY_REFUNDED"})

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
    "captured_cents",
    "refunded_cents",
    "capture_id",
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
    row = row_of(tx, cmd.order_id)
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


def void(tx: Tx, cmd: c.Void | c.Refund, currency: str) -> c.Payment:
    """Give the authorization back, if there was one: idempotent and order-tolerant; refused (CONFLICT) once
    money was captured, which only a refund of an amount gives back."""
    row = row_of(tx, cmd.order_id)
    if row is not None and row["status"] in SETTLED:
        return payment_of(row)
    if row is not None and row["status"] in CAPTURED:
        raise Conflict(
            f"payment for order {cmd.order_id} is {row['status'].lower()}: captured: refund an amount",
            {"order_id": cmd.order_id, "status": row["status"], **money_left(row)},
        )
    payment = voided_tombstone(tx, cmd.order_id, currency) if row is None else _voided(tx, row)
    extra = {"reason": cmd.reason, "tombstone": row is None}
    tx.emit(PAYMENT_VOIDED, cmd.order_id, payment.model_dump(mode="json") | extra, order_id=cmd.order_id)
    return payment


def voided_tombstone(tx: Tx, order_id: str, currency: str) -> c.Payment:
    """The void (or a capture's reversal) overtook, or replaced, the authorize: a VOIDED row of nothing
    refuses a late one. The caller emits its event."""
    now = now_iso()
    payment = c.Payment(
        order_id=order_id, amount_cents=0, currency=currency, status="VOIDED", created_at=now, updated_at=now
    )
    _insert(tx, payment)
    return payment


def _voided(tx: Tx, row: sqlite3.Row) -> c.Payment:
    # Nothing was taken (AUTHORIZED) or nothing was charged (DECLINED): either way the payment is void.
    now = now_iso()
    tx.execute("UPDATE payments SET status = 'VOIDED', updated_at = ? WHERE order_id = ?", (now, row["order_id"]))
    return payment_of(row).model_copy(update={"status": "VOIDED", "updated_at": now})


def money_left(row: sqlite3.Row) -> dict[str, int]:
    """What a payment has captured, refunded, and may still refund (for error details)."""
    return {
        "captured_cents": row["captured_cents"],
        "refunded_cents": row["refunded_cents"],
        "refundable_cents": row["captured_cents"] - row["refunded_cents"],
    }


def get(tx: Tx, cmd: c.GetPayment) -> c.Payment:
    row = row_of(tx, cmd.order_id)
    if row is None:
        raise NotFound(f"no payment for order {cmd.order_id}", {"order_id": cmd.order_id})
    return payment_of(row)


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
    return c.PaymentList(payments=[payment_of(row) for row in rows])


def row_of(tx: Tx, order_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM payments WHERE order_id = ?", (order_id,))


def update(tx: Tx, payment: c.Payment) -> None:
    """Write a payment's row as `payment` has it (its money, status, capture and time)."""
    tx.execute(
        "UPDATE payments SET status = ?, captured_cents = ?, refunded_cents = ?, capture_id = ?, updated_at = ?"
        " WHERE order_id = ?",
        (
            payment.status,
            payment.captured_cents,
            payment.refunded_cents,
            payment.capture_id,
            payment.updated_at,
            payment.order_id,
        ),
    )


def _repeat(row: sqlite3.Row, cmd: c.Authorize) -> c.Payment | Rejected:
    """A repeat answers as the first authorize did, once what it reports is in the stream (hence Rejected,
    not raised: the caller waits for the events committed before it)."""
    status = row["status"]
    if status == "DECLINED":
        return Rejected(_declined(cmd.order_id, row["decline_reason"]))
    if status in SETTLED:
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
    return payment_of(row)


def _declined(order_id: str, reason: str) -> PaymentDeclined:
    return PaymentDeclined(f"payment for order {order_id} declined: {reason}", {"reason": reason})


def _insert(tx: Tx, payment: c.Payment) -> None:
    tx.execute(
        f"INSERT INTO payments ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
        [getattr(payment, col) for col in _COLUMNS],
    )


def payment_of(row: sqlite3.Row) -> c.Payment:
    return c.Payment(**{col: row[col] for col in _COLUMNS})
