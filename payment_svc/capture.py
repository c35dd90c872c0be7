"""Capturing a payment (taking the money authorized), and the capture's compensation, each with its event.

A capture is named by its caller's `capture_id`: a repeat of it answers the payment it captured. Its
reversal is idempotent and order-tolerant, as every compensation is (DESIGN decision 6): one that overtakes
its capture leaves a tombstone in `capture_reversals`, and a late capture with that id is refused. A reversed
capture id is never taken again, also after a capture it undid.
"""

from __future__ import annotations

import sqlite3

from bus import contract as c
from bus.errors import Conflict, NotFound
from bus.ids import now_iso
from bus.unit import Tx
from payment_svc import store


def capture(tx: Tx, cmd: c.Capture) -> c.Payment:
    """AUTHORIZED -> CAPTURED, of the whole authorization or `amount_cents` of it. Idempotent per capture_id;
    raises NotFound, Conflict (captured by another id, reversed, void, declined or refunded, above the
    authorization, an authorization of nothing)."""
    row = store.row_of(tx, cmd.order_id)
    if row is None:
        raise NotFound(f"no payment for order {cmd.order_id}", {"order_id": cmd.order_id})
    amount = cmd.amount_cents if cmd.amount_cents is not None else row["amount_cents"]
    if row["capture_id"] == cmd.capture_id:
        return _repeat(row, cmd, amount)
    if reversed_at(tx, cmd.order_id, cmd.capture_id) is not None:
        raise _refused(cmd, f"capture {cmd.capture_id} was reversed; a late capture is refused")
    if row["status"] != "AUTHORIZED":
        what = f"captured by {row['capture_id']}" if row["capture_id"] else row["status"].lower()
        raise Conflict(
            f"payment for order {cmd.order_id} is {what}; only an authorized payment is captured",
            {"order_id": cmd.order_id, "capture_id": cmd.capture_id, "status": row["status"]},
        )
    if amount == 0:  # an authorization of nothing (a total of 0): there is nothing to take
        raise _refused(cmd, "nothing was authorized to capture", authorized_cents=0)
    if amount > row["amount_cents"]:
        raise _refused(
            cmd,
            f"capture of {amount} is above the {row['amount_cents']} {row['currency']} authorized",
            amount_cents=amount,
            authorized_cents=row["amount_cents"],
        )
    now = now_iso()
    payment = store.payment_of(row).model_copy(
        update={"status": "CAPTURED", "captured_cents": amount, "capture_id": cmd.capture_id, "updated_at": now}
    )
    store.update(tx, payment)
    tx.emit(store.PAYMENT_CAPTURED, cmd.order_id, payment.model_dump(mode="json"), order_id=cmd.order_id)
    return payment


def reverse_capture(tx: Tx, cmd: c.ReverseCapture, currency: str) -> c.Payment:
    """Undo the capture `capture_id` if it happened (CAPTURED -> AUTHORIZED, nothing taken), or leave a
    tombstone refusing it later. Idempotent and order-tolerant; raises Conflict once something of the
    capture was refunded. For an unknown order the tombstone comes with a VOIDED payment of nothing (as a
    void's does): nothing can be captured, nor authorized, for it afterwards."""
    if reversed_at(tx, cmd.order_id, cmd.capture_id) is not None:
        row = store.row_of(tx, cmd.order_id)
        assert row is not None  # a reversal always leaves a payment row, a tombstone's VOIDED one included
        return store.payment_of(row)
    row = store.row_of(tx, cmd.order_id)
    now = now_iso()
    if row is None:
        payment = store.voided_tombstone(tx, cmd.order_id, currency)
        void = payment.model_dump(mode="json") | {"reason": cmd.reason, "tombstone": True}
        tx.emit(store.PAYMENT_VOIDED, cmd.order_id, void, order_id=cmd.order_id)
        tombstone = True
    elif row["capture_id"] == cmd.capture_id:
        if row["refunded_cents"]:
            raise Conflict(
                f"capture {cmd.capture_id} of order {cmd.order_id} is partly refunded already; refund the rest"
                " instead of reversing it",
                {"order_id": cmd.order_id, "capture_id": cmd.capture_id, **store.money_left(row)},
            )
        payment = store.payment_of(row).model_copy(
            update={"status": "AUTHORIZED", "captured_cents": 0, "capture_id": None, "updated_at": now}
        )
        store.update(tx, payment)
        tombstone = False
    else:  # the reversal overtook its capture, or the capture never came
        payment, tombstone = store.payment_of(row), True
    tx.execute(
        "INSERT INTO capture_reversals (order_id, capture_id, tombstone, reason, reversed_at) VALUES (?, ?, ?, ?, ?)",
        (cmd.order_id, cmd.capture_id, int(tombstone), cmd.reason, now),
    )
    reversal = {"capture_id": cmd.capture_id, "tombstone": tombstone, "reason": cmd.reason, "reversed_at": now}
    data = payment.model_dump(mode="json") | {"reversal": reversal}
    tx.emit(store.PAYMENT_CAPTURE_REVERSED, cmd.order_id, data, order_id=cmd.order_id)
    return payment


def reversed_at(tx: Tx, order_id: str, capture_id: str) -> str | None:
    row = tx.one(
        "SELECT reversed_at FROM capture_reversals WHERE order_id = ? AND capture_id = ?", (order_id, capture_id)
    )
    return None if row is None else row["reversed_at"]


def _repeat(row: sqlite3.Row, cmd: c.Capture, amount: int) -> c.Payment:
    """The capture this id made, answered as the payment is now (refunds may have followed it)."""
    if amount != row["captured_cents"]:
        raise _refused(
            cmd,
            f"capture {cmd.capture_id} took {row['captured_cents']}, not {amount}",
            amount_cents=amount,
            captured_cents=row["captured_cents"],
        )
    return store.payment_of(row)


def _refused(cmd: c.Capture, message: str, **details: object) -> Conflict:
    return Conflict(
        f"payment for order {cmd.order_id}: {message}",
        {"order_id": cmd.order_id, "capture_id": cmd.capture_id, **details},
    )
