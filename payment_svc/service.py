"""Payment endpoints: authorize, capture and its reversal, refund and void, get and the payments audit."""

from __future__ import annotations

from pydantic import BaseModel

from bus import contract as c
from bus import subjects as s
from bus.migrations import Schema
from bus.service import Call
from bus.spec import Kernel, ServiceSpec
from bus.unit import Rejected, Tx
from payment_svc import capture, refunds, replay, store

# Fields a request gained after keys were stored for it: left out of its hash while unset, so that a repeat of
# a key stored before (a resumed saga's refund, say) is still the same request.
REFUND_ADDED = ("refund_id", "amount_cents")


def unset(cmd: BaseModel, fields: tuple[str, ...]) -> frozenset[str]:
    return frozenset(name for name in fields if getattr(cmd, name) is None)


def moved(tx: Tx, k: Kernel, payment: c.Payment | Rejected, kinds: dict[str, int]) -> c.Payment | Rejected:
    """Count the money this unit moved (`kinds`: event type -> cents), once it has committed; a repeat of a
    capture or a refund emits nothing, so it counts nothing."""
    emitted = {row.subject.split(".")[2] for row in tx.events}
    for event, cents in kinds.items():
        if event in emitted and cents:
            kind = event.removeprefix("payment_")
            tx.after_commit(lambda kind=kind, cents=cents: k.metrics.money.labels(kind).inc(cents))
    return payment


async def build(k: Kernel) -> None:
    db, currency, limit_cents = k.db, k.settings.currency, k.settings.payment_limit_cents

    async def authorize(cmd: c.Authorize, call: Call) -> c.Payment:
        """One payment per order_id, idempotent; raises PaymentDeclined (recorded) and Conflict."""

        def effect(tx: Tx) -> c.Payment | Rejected:
            return moved(tx, k, store.authorize(tx, cmd, limit_cents), {store.PAYMENT_AUTHORIZED: cmd.amount_cents})

        return await db.run(call.once(cmd, effect))

    async def capture_(cmd: c.Capture, call: Call) -> c.Payment:
        """Idempotent per capture_id; raises NotFound and Conflict."""

        def effect(tx: Tx) -> c.Payment:
            payment = capture.capture(tx, cmd)
            moved(tx, k, payment, {store.PAYMENT_CAPTURED: payment.captured_cents})
            return payment

        return await db.run(call.once(cmd, effect))

    async def reverse_capture(cmd: c.ReverseCapture, call: Call) -> c.Payment:
        """Idempotent and order-tolerant (a tombstone refuses a late capture); raises Conflict once refunded."""

        def effect(tx: Tx) -> c.Payment:
            captured = store.row_of(tx, cmd.order_id)
            cents = captured["captured_cents"] if captured is not None else 0
            payment = capture.reverse_capture(tx, cmd, currency)
            moved(tx, k, payment, {store.PAYMENT_CAPTURE_REVERSED: cents - payment.captured_cents})
            return payment

        return await db.run(call.once(cmd, effect))

    async def refund(cmd: c.Refund, call: Call) -> c.Payment:
        """Of an amount: idempotent per refund_id, never past what was captured. Without: a void."""
        exclude = unset(cmd, REFUND_ADDED)

        def effect(tx: Tx) -> c.Payment:
            payment = refunds.refund(tx, cmd, currency)
            moved(tx, k, payment, {store.PAYMENT_REFUNDED: cmd.amount_cents or 0})
            return payment

        return await db.run(call.once(cmd, effect, exclude))

    async def void(cmd: c.Void, call: Call) -> c.Payment:
        """Idempotent and order-tolerant: an unknown order gets a VOIDED tombstone; raises Conflict once captured."""
        return await db.run(call.once(cmd, lambda tx: store.void(tx, cmd, currency)))

    async def get(cmd: c.GetPayment, call: Call) -> c.Payment:
        """Read-only; raises NotFound."""
        return await db.read(lambda tx: store.get(tx, cmd))

    async def payments(cmd: c.PaymentQuery, call: Call) -> c.PaymentList:
        """Read-only, for the audit."""
        return await db.read(lambda tx: store.payments(tx, cmd))

    k.runner.add_all(
        (s.PAYMENT_AUTHORIZE, authorize),
        (s.PAYMENT_CAPTURE, capture_),
        (s.PAYMENT_REVERSE_CAPTURE, reverse_capture),
        (s.PAYMENT_REFUND, refund),
        (s.PAYMENT_VOID, void),
        (s.PAYMENT_GET, get),
        (s.PAYMENT_LIST, payments),
    )


SPEC = ServiceSpec(
    name="payment",
    description="Authorizes, captures, refunds and voids payments per order, with deterministic decline rules",
    schema=Schema(store.MIGRATIONS),
    build=build,
    apply=replay.apply,
)
