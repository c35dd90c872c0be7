"""A hypothesis state machine of the saga engine against scripted participants.

Random interleavings of orders, successes, business errors, timeouts, lost
replies, late deliveries, cancellations and crash-restarts of the engine
never break the invariants: a CONFIRMED order holds one reservation and one
authorization; a FAILED or CANCELLED one holds neither.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bus import contract as c
from bus.db import Database
from bus.errors import Conflict, OutOfStock, PaymentDeclined, RequestTimeout, Unavailable
from bus.saga.definition import StepCall
from bus.saga.engine import SagaEngine
from bus.settings import SagaSettings
from order_svc.saga import PLACE_ORDER
from order_svc.service import SPEC as ORDERS_SPEC
from tests.sagas import WHEN, placing

FAST = SagaSettings(
    step_timeout_ms=50, deadline_ms=60_000, retry_initial_ms=1, retry_max_interval_ms=2, retry_max_attempts=5
)
FAULTS = ("ok", "timeout", "lost_reply", "late", "unavailable", "business", "crash")


class Crash(Exception):
    """The order service dies in the middle of a request."""


class World:
    """Inventory and payment as they really behave: idempotent per order, tombstones on compensation."""

    def __init__(self) -> None:
        self.reservations: dict[str, str] = {}
        self.payments: dict[str, str] = {}

    def apply(self, subject: str, body: dict[str, Any]) -> Any:
        oid = body["order_id"]
        if subject == "inventory.reserve":
            if self.reservations.get(oid) == "RELEASED":
                raise Conflict("released")
            self.reservations[oid] = "ACTIVE"
            items = [c.PricedLine(sku=i["sku"], qty=i["qty"], unit_price_cents=100) for i in body["items"]]
            total = 100 * sum(i["qty"] for i in body["items"])
            held = c.Reservation(
                order_id=oid, status="ACTIVE", items=items, total_cents=total, currency="USD", created_at=WHEN
            )
            return held
        if subject == "inventory.release":
            self.reservations[oid] = "RELEASED"
            return c.Released(order_id=oid)
        if subject == "payment.authorize":
            state = self.payments.get(oid)
            if state in ("REFUNDED", "VOIDED"):
                raise Conflict("refunded")
            if state == "DECLINED" or (state is None and body["method"] != "card"):
                self.payments[oid] = "DECLINED"
                raise PaymentDeclined("declined")
            self.payments[oid] = "AUTHORIZED"
            payment = c.Payment(
                order_id=oid,
                status="AUTHORIZED",
                amount_cents=body["amount_cents"],
                currency=body["currency"],
                created_at=WHEN,
                updated_at=WHEN,
            )
            return payment
        assert subject == "payment.refund"
        state = self.payments.get(oid)
        self.payments[oid] = state if state == "REFUNDED" else "VOIDED"  # a refund without an amount is a void
        return {"order_id": oid, "status": self.payments[oid]}


class SagaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.db = Database(Path(self.dir.name) / "orders.db", "orders", ORDERS_SPEC.schema)
        self.loop.run_until_complete(self.db.open())
        self.world = World()
        self.faults: deque[str] = deque()
        self.late: list[tuple[str, dict[str, Any]]] = []
        self.orders: list[str] = []
        self.engine = self._engine()

    def _engine(self) -> SagaEngine:
        return SagaEngine(self.db, PLACE_ORDER, self.send, FAST)

    async def send(self, call: StepCall) -> Any:
        route, body = call.route, call.command.model_dump(mode="json")
        fault = self.faults.popleft() if self.faults else "ok"
        if fault == "timeout":
            raise RequestTimeout("no reply")
        if fault == "unavailable":
            raise Unavailable("down")
        if fault == "late":
            self.late.append((route.subject, body))
            raise RequestTimeout("still on its way")
        if fault == "business" and route.subject == "inventory.reserve":
            raise OutOfStock("none left")
        result = self.world.apply(route.subject, body)
        if fault == "lost_reply":
            raise RequestTimeout("reply lost")
        if fault == "crash":
            raise Crash("killed")
        return result

    def run(self, seconds: float = 0.05) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def statuses(self) -> dict[str, str]:
        rows = self.loop.run_until_complete(self.db.read(lambda tx: tx.all("SELECT order_id, status FROM orders")))
        return {r["order_id"]: r["status"] for r in rows}

    @rule(method=st.sampled_from(["card", "card", "card_declined"]))
    def place(self, method: str) -> None:
        order_id = f"ord_{len(self.orders)}"
        unit = placing(self.engine, order_id, saga_id=f"saga_{order_id}", qty=1, method=method, customer="c", sku="A")
        self.loop.run_until_complete(self.db.run(unit))  # the saga starts once the order is in
        self.orders.append(order_id)

    @rule(faults=st.lists(st.sampled_from(FAULTS), max_size=6))
    def inject(self, faults: list[str]) -> None:
        self.faults.extend(faults)

    @rule(seconds=st.sampled_from([0.0, 0.01, 0.05]))
    def let_time_pass(self, seconds: float) -> None:
        self.run(seconds)

    @rule()
    def deliver_late(self) -> None:
        # No precondition: whether something is late depends on timing, and rule choice must not.
        if not self.late:
            return
        subject, body = self.late.pop(0)
        try:
            self.world.apply(subject, body)
        except (Conflict, PaymentDeclined):
            pass  # refused, as a late command after its compensation must be

    @precondition(lambda self: self.orders)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(self.orders))
        status = self.statuses()[order_id]
        if status in ("PENDING", "CONFIRMED"):
            self.loop.run_until_complete(self.engine.stop_forward(f"saga_{order_id}", "CANCELLED"))

    @rule()
    def crash_and_restart(self) -> None:
        self.loop.run_until_complete(self.engine.stop())
        self.engine = self._engine()
        self.loop.run_until_complete(self.engine.resume_all())

    @invariant()
    def settled_orders_hold_exactly_what_they_should(self) -> None:
        for order_id, status in self.statuses().items():
            reserved = self.world.reservations.get(order_id) == "ACTIVE"
            charged = self.world.payments.get(order_id) == "AUTHORIZED"
            if status == "CONFIRMED":
                assert reserved and charged, (order_id, status, reserved, charged)
            elif status in ("FAILED", "CANCELLED"):
                assert not reserved and not charged, (order_id, status, reserved, charged)

    def teardown(self) -> None:
        # quiesce: no more faults, deliver what is late, restart the engine until every saga has ended
        self.faults.clear()
        for _ in range(20):
            while self.late:
                self.deliver_late()
            self.crash_and_restart()
            self.run(0.1)
            if all(s in ("CONFIRMED", "FAILED", "CANCELLED") for s in self.statuses().values()):
                break
        statuses = self.statuses()
        assert all(s in ("CONFIRMED", "FAILED", "CANCELLED") for s in statuses.values()), statuses
        self.settled_orders_hold_exactly_what_they_should()
        self.loop.run_until_complete(self.engine.stop())
        self.loop.run_until_complete(self.db.close())
        self.loop.close()
        self.dir.cleanup()


TestSagaStates = SagaMachine.TestCase
TestSagaStates.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
