"""Payment endpoints: authorize, refund, get and the payments audit."""

from __future__ import annotations

from bus import contract as c
from bus import subjects as s
from bus.migrations import Schema
from bus.service import Call
from bus.spec import Kernel, ServiceSpec
from payment_svc import replay, store


async def build(k: Kernel) -> None:
    db, currency, limit_cents = k.db, k.settings.currency, k.settings.payment_limit_cents

    async def authorize(cmd: c.Authorize, call: Call) -> c.Payment:
        """One payment per order_id, idempotent; raises PaymentDeclined (recorded) and Conflict."""
        return await db.run(call.once(cmd, lambda tx: store.authorize(tx, cmd, limit_cents)))

    async def refund(cmd: c.Refund, call: Call) -> c.Payment:
        """Idempotent and order-tolerant: an unknown order gets a VOIDED tombstone."""
        return await db.run(call.once(cmd, lambda tx: store.refund(tx, cmd, currency)))

    async def get(cmd: c.GetPayment, call: Call) -> c.Payment:
        """Read-only; raises NotFound."""
        return await db.read(lambda tx: store.get(tx, cmd))

    async def payments(cmd: c.PaymentQuery, call: Call) -> c.PaymentList:
        """Read-only, for the audit."""
        return await db.read(lambda tx: store.payments(tx, cmd))

    k.runner.add_all(
        (s.PAYMENT_AUTHORIZE, authorize), (s.PAYMENT_REFUND, refund), (s.PAYMENT_GET, get), (s.PAYMENT_LIST, payments)
    )


SPEC = ServiceSpec(
    name="payment",
    description="Authorizes and refunds payments per order, with deterministic decline rules",
    schema=Schema(store.MIGRATIONS),
    build=build,
    apply=replay.apply,
)
