"""Refunds: of an amount of what was captured, each named by its caller's `refund_id`, with its event; a
refund without an amount is a void (payment_svc.store.void)."""

from __future__ import annotations

from bus import contract as c
from bus.errors import Conflict, NotFound
from bus.ids import now_iso
from bus.unit import Tx
from payment_svc import store


def refund(tx: Tx, cmd: c.Refund, currency: str) -> c.Payment:
    """With an amount: give it back (`refund_amount`); without: void the authorization (`store.void`)."""
    if cmd.amount_cents is None:
        return store.void(tx, cmd, currency)
    return refund_amount(tx, cmd)


def refund_amount(tx: Tx, cmd: c.Refund) -> c.Payment:
    """CAPTURED or PARTIALLY_REFUNDED -> PARTIALLY_REFUNDED, or REFUNDED once all that was captured is given
    back; never more than that. Idempotent per refund_id; raises NotFound and Conflict (another amount or
    order for the refund_id, nothing captured, more than is left)."""
    assert cmd.refund_id is not None and cmd.amount_cents is not None  # the contract pairs them
    amount = cmd.amount_cents
    done = tx.one("SELECT order_id, amount_cents FROM refunds WHERE refund_id = ?", (cmd.refund_id,))
    if done is not None:
        if (done["order_id"], done["amount_cents"]) != (cmd.order_id, amount):
            raise Conflict(
                f"refund {cmd.refund_id} was of {done['amount_cents']} for order {done['order_id']}",
                {"refund_id": cmd.refund_id, "order_id": done["order_id"], "amount_cents": done["amount_cents"]},
            )
        row = store.row_of(tx, cmd.order_id)
        assert row is not None
        return store.payment_of(row)
    row = store.row_of(tx, cmd.order_id)
    if row is None:
        raise NotFound(f"no payment for order {cmd.order_id}", {"order_id": cmd.order_id})
    if row["status"] not in store.CAPTURED:
        raise Conflict(
            f"payment for order {cmd.order_id} is {row['status'].lower()}: nothing captured is left to refund",
            {"order_id": cmd.order_id, "refund_id": cmd.refund_id, "status": row["status"], **store.money_left(row)},
        )
    left = row["captured_cents"] - row["refunded_cents"]
    if amount > left:
        raise Conflict(
            f"refund of {amount} for order {cmd.order_id} is more than the {left} {row['currency']} left to refund"
            f" (captured {row['captured_cents']}, refunded {row['refunded_cents']})",
            {"order_id": cmd.order_id, "refund_id": cmd.refund_id, "amount_cents": amount, **store.money_left(row)},
        )
    now = now_iso()
    refunded = row["refunded_cents"] + amount
    status = "REFUNDED" if refunded == row["captured_cents"] else "PARTIALLY_REFUNDED"
    payment = store.payment_of(row).model_copy(update={"status": status, "refunded_cents": refunded, "updated_at": now})
    store.update(tx, payment)
    tx.execute(
        "INSERT INTO refunds (refund_id, order_id, amount_cents, created_at) VALUES (?, ?, ?, ?)",
        (cmd.refund_id, cmd.order_id, amount, now),
    )
    data = payment.model_dump(mode="json") | {
        "refund": {"refund_id": cmd.refund_id, "amount_cents": amount},
        "reason": cmd.reason,
    }
    tx.emit(store.PAYMENT_REFUNDED, cmd.order_id, data, order_id=cmd.order_id)
    return payment
