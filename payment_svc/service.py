"""Payment endpoints: authorize, refund, get and the payments audit."""

from __future__ import annotations

from typing import Any

from bus import contract as c
from bus import subjects as s
from bus.app import Kernel, ServiceSpec
from bus.service import Call
from payment_svc import replay, store

Reply = c.Result | dict[str, Any]  # a dict when an idempotency key replays its stored reply


async def build(k: Kernel) -> None:
    db, currency, limit_cents = k.db, k.settings.currency, k.settings.payment_limit_cents

    async def authorize(cmd: c.Authorize, call: Call) -> Reply:
        """One payment per order_id, idempotent; raises PaymentDeclined (recorded) and Conflict."""
        return await db.write(call.once(cmd, lambda tx: store.authorize(tx, cmd, limit_cents)))

    async def refund(cmd: c.Refund, call: Call) -> Reply:
        """Idempotent and order-tolerant: an unknown order gets a VOIDED tombstone."""
        return await db.write(call.once(cmd, lambda tx: store.refund(tx, cmd, currency)))

    async def get(cmd: c.GetPayment, call: Call) -> c.Payment:
        """Read-only; raises NotFound."""
        return await db.read(lambda tx: store.get(tx, cmd))

    async def payments(cmd: c.PaymentQuery, call: Call) -> c.PaymentList:
        """Read-only, for the audit."""
        return await db.read(lambda tx: store.payments(tx, cmd))

    k.runner.add(s.PAYMENT_AUTHORIZE, authorize)
    k.runner.add(s.PAYMENT_REFUND, refund)
    k.runner.add(s.PAYMENT_GET, get)
    k.runner.add(s.PAYMENT_LIST, payments)


SPEC = ServiceSpec(
    name="payment",
    description="Authorizes and refunds payments per order, with deterministic decline rules",
    migrations=store.MIGRATIONS,
    build=build,
    apply=replay.apply,
)
