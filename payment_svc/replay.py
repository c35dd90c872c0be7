"""Rebuilding the payment tables from their events: payments, refunds and capture reversals.

Every payment event carries the whole row after its change, and stream order is commit order, so setting
the row to each event's in turn gives the table back exactly, also where a row went back (a capture
reversed: CAPTURED to AUTHORIZED). A copy of an event stored again later does not get here (the rebuild
applies each event id once, bus.replay): it would set a row back to an older state. A refund's event adds
its row in `refunds` (`refund`: its id and amount; made when the payment was updated), a capture reversal's
its row in `capture_reversals` (`reversal`), tombstones included.

The idempotency table is not rebuilt: authorize, void and reversals are idempotent by order id and capture
id, capture by capture id and refunds by refund id, which is what a resumed saga relies on when it re-sends
a step.
"""

from __future__ import annotations

from typing import Any

from bus.contract import Event, Payment
from bus.unit import Tx
from payment_svc import store

COLUMNS = tuple(Payment.model_fields)
TYPES = frozenset(
    {
        store.PAYMENT_AUTHORIZED,
        store.PAYMENT_DECLINED,
        store.PAYMENT_VOIDED,
        store.PAYMENT_CAPTURED,
        store.PAYMENT_CAPTURE_REVERSED,
        store.PAYMENT_REFUNDED,
    }
)
_UPSERT = (
    f"INSERT INTO payments ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    f" ON CONFLICT (order_id) DO UPDATE SET {', '.join(f'{col} = excluded.{col}' for col in COLUMNS[1:])}"
)


def apply(tx: Tx, event: Event) -> None:
    """Replay one payment event: the row it carries, and the refund or reversal it records."""
    if event.type not in TYPES:
        return
    payment = Payment.model_validate(event.data)
    tx.execute(_UPSERT, [getattr(payment, column) for column in COLUMNS])
    refund: dict[str, Any] | None = event.data.get("refund")
    if event.type == store.PAYMENT_REFUNDED and refund:  # (a refund before fulfilment was a void: no amount)
        tx.execute(
            "INSERT INTO refunds (refund_id, order_id, amount_cents, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (refund["refund_id"], payment.order_id, refund["amount_cents"], payment.updated_at),
        )
    reversal: dict[str, Any] | None = event.data.get("reversal")
    if event.type == store.PAYMENT_CAPTURE_REVERSED and reversal:
        tx.execute(
            "INSERT INTO capture_reversals (order_id, capture_id, tombstone, reason, reversed_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                payment.order_id,
                reversal["capture_id"],
                int(reversal["tombstone"]),
                reversal.get("reason"),
                reversal["reversed_at"],
            ),
        )
