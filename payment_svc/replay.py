"""Rebuilding the payments table from its events: every payment event carries the whole row.

A payment only moves forward (AUTHORIZED or DECLINED, then REFUNDED or
VOIDED), so an event never takes a row back; a copy of an event stored again
does not even get here (the rebuild applies each event id once, bus.replay).

The idempotency table is not rebuilt: authorize and refund are idempotent by
order id, which is what a resumed saga relies on when it re-sends a step.
"""

from __future__ import annotations

from bus.contract import Event, Payment
from bus.unit import Tx
from payment_svc import store

STAGE = {"AUTHORIZED": 0, "DECLINED": 0, "REFUNDED": 1, "VOIDED": 1}
COLUMNS = tuple(Payment.model_fields)
TYPES = frozenset({store.PAYMENT_AUTHORIZED, store.PAYMENT_DECLINED, store.PAYMENT_REFUNDED, store.PAYMENT_VOIDED})


def apply(tx: Tx, event: Event) -> None:
    """Replay one payment event: insert the row it carries, or move an existing row forward to it."""
    if event.type not in TYPES:
        return
    payment = Payment.model_validate(event.data)
    row = tx.one("SELECT status FROM payments WHERE order_id = ?", (payment.order_id,))
    if row is None:
        tx.execute(
            f"INSERT INTO payments ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            [getattr(payment, column) for column in COLUMNS],
        )
    elif STAGE[payment.status] > STAGE[row["status"]]:
        tx.execute(
            "UPDATE payments SET status = ?, updated_at = ? WHERE order_id = ?",
            (payment.status, payment.updated_at, payment.order_id),
        )
