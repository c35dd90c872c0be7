"""What the saga tests start from, without a broker: scripted participants that answer with the contract's
models, the one way to place an order and create its saga, and quick saga settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bus import contract as c
from bus.db import Database
from bus.errors import OmsError
from bus.saga.definition import StepCall
from bus.saga.engine import SagaEngine
from bus.saga.state import SagaRun
from bus.settings import SagaSettings
from bus.unit import Tx
from order_svc import orders
from order_svc.saga import PlaceOrderData, saga_of

FAST = SagaSettings(
    step_timeout_ms=50, deadline_ms=5000, retry_initial_ms=1, retry_max_interval_ms=5, retry_max_attempts=4
)
WHEN = "2026-01-01T00:00:00.000Z"

# What a scripted participant answers: a reply model, an error it raises, or None for the usual answer.
Answer = c.Reservation | c.Payment | c.Released | OmsError | None
Script = Callable[[StepCall], Answer]


def reservation(call: StepCall, *, fewer: int = 0, price_cents: int = 1000) -> c.Reservation:
    """What inventory answers to a reserve: every line held (`fewer` units fewer each), priced."""
    cmd = call.command
    assert isinstance(cmd, c.Reserve)
    lines = [c.PricedLine(sku=line.sku, qty=line.qty - fewer, unit_price_cents=price_cents) for line in cmd.items]
    total = sum(line.qty * price_cents for line in lines)
    return c.Reservation(
        order_id=cmd.order_id, status="ACTIVE", items=lines, total_cents=total, currency="USD", created_at=WHEN
    )


def authorization(call: StepCall, *, amount_cents: int | None = None) -> c.Payment:
    """What payment answers to an authorize: authorized, of the amount asked (or of `amount_cents`)."""
    cmd = call.command
    assert isinstance(cmd, c.Authorize)
    return c.Payment(
        order_id=cmd.order_id,
        customer_id=cmd.customer_id,
        amount_cents=cmd.amount_cents if amount_cents is None else amount_cents,
        currency=cmd.currency,
        method=cmd.method,
        status="AUTHORIZED",
        created_at=WHEN,
        updated_at=WHEN,
    )


def usual(call: StepCall) -> c.Reservation | c.Payment | c.Released:
    subject = call.route.subject
    if subject == "inventory.reserve":
        return reservation(call)
    if subject == "payment.authorize":
        return authorization(call)
    order_id = getattr(call.command, "order_id", "")
    if subject == "inventory.release":
        return c.Released(order_id=order_id)
    return c.Payment(
        order_id=order_id, amount_cents=0, currency="USD", status="VOIDED", created_at=WHEN, updated_at=WHEN
    )


class Participants:
    """Scripted inventory and payment: records every request, answers as the script says."""

    def __init__(self, script: Script | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.script = script or (lambda call: None)

    async def send(self, call: StepCall) -> Any:
        self.calls.append((call.route.subject, call.idempotency_key))
        answer = self.script(call)
        if isinstance(answer, OmsError):
            raise answer
        return answer or usual(call)

    def subjects(self) -> list[str]:
        return [subject for subject, _ in self.calls]


def held_at(subject: str, gate: asyncio.Event, reached: asyncio.Event) -> Callable[[StepCall], Any]:
    """A send that holds every request on `subject` until `gate` opens (`reached` says one is held)."""

    async def send(call: StepCall) -> Any:
        if call.route.subject == subject:
            reached.set()
            await gate.wait()
        return await Participants().send(call)

    return send


def placing(
    engine: SagaEngine[PlaceOrderData],
    order_id: str = "ord_1",
    *,
    saga_id: str | None = None,
    qty: int = 2,
    method: str = "card",
    customer: str = "c1",
    sku: str = "KB-101",
    started: bool = True,
) -> Callable[[Tx], SagaRun[PlaceOrderData]]:
    """The unit of work that places an order and creates its saga, as `orders.place` does (the saga's id
    follows from the order's unless given); the saga starts once it has committed, unless not `started`
    (the process died first)."""
    cmd = c.PlaceOrder(customer_id=customer, items=[c.Line(sku=sku, qty=qty)], payment_method=method)  # type: ignore[arg-type]
    saga_id = saga_id or saga_of(order_id)

    def unit(tx: Tx) -> SagaRun[PlaceOrderData]:
        orders.create(tx, order_id, saga_id, cmd)
        create = engine.create if started else engine.transitions.create
        return create(tx, saga_id, order_id, PlaceOrderData.placed(order_id, cmd))

    return unit


async def place(db: Database, engine: SagaEngine[PlaceOrderData], order_id: str = "ord_1", method: str = "card") -> str:
    """Place an order and wait for its saga to end; returns the saga's id (`saga_<order id>`)."""
    saga_id = f"saga_{order_id}"
    await db.run(placing(engine, order_id, saga_id=saga_id, method=method))
    assert await engine.wait(saga_id, 10)
    return saga_id


async def order_status(db: Database, order_id: str = "ord_1") -> tuple[str, str | None]:
    row = await db.read(lambda tx: orders.get(tx, order_id))
    return row["status"], row["failure_reason"]
