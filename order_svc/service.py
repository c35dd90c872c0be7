"""Order endpoints: place, get, list, cancel, events, and the saga operator's endpoints."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bus import contract as c
from bus import subjects as s
from bus.breaker import Breakers
from bus.client import Client
from bus.db import Acked, Database
from bus.errors import BreakerOpen, Conflict, NotFound, Unavailable
from bus.ids import new_id
from bus.migrations import Schema
from bus.saga.definition import StepCall
from bus.saga.engine import SagaEngine
from bus.saga.schema import MIGRATIONS as SAGA_MIGRATIONS
from bus.saga.state import ACTIVE, Reason, SagaStatus
from bus.service import Call
from bus.spec import Kernel, ServiceSpec
from bus.unit import Tx
from order_svc import orders, replay, shipments
from order_svc.fulfil import RETURN_ORDER, SHIP_ORDER, ReturnData, ShipData
from order_svc.saga import PLACE_ORDER, OrderLine, PlaceOrderData, saga_of
from order_svc.timeline import order_events

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 10.0
WAIT_EXCLUDES = frozenset({"wait_ms"})  # how long to wait is not part of what a key asks for
BREAKER_STATE = {"closed": 0, "half_open": 1, "open": 2}


@dataclass
class Orders:
    """The handlers; they use the database and the engine only."""

    db: Database
    engine: SagaEngine[PlaceOrderData]
    timeline: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None  # an order's events, from JetStream
    shipping: SagaEngine[ShipData] | None = None
    returning: SagaEngine[ReturnData] | None = None

    def engines(self) -> tuple[SagaEngine[Any], ...]:
        return tuple(e for e in (self.engine, self.shipping, self.returning) if e is not None)

    def _engine_of(self, tx: Tx, saga_id: str) -> SagaEngine[Any]:
        """The engine that runs this saga (an order's placement, its shipment, one of its returns)."""
        view = self.engine.view(tx, saga_id)
        if view is None:
            raise NotFound(f"no saga {saga_id}", {"saga_id": saga_id})
        return next((e for e in self.engines() if e.saga.name == view.name), self.engine)

    async def place(self, cmd: c.PlaceOrder, call: Call) -> c.Order:
        """A new order and its saga in one unit of work; the saga starts once it has committed and sends
        nothing before the order's creation is in JetStream (were this database lost first, a rebuild would
        not know the order or its key, and the client's retry would reserve and charge a second time)."""
        order_id = new_id("ord")

        def effect(tx: Tx) -> c.Order:
            order = orders.create(tx, order_id, saga_of(order_id), cmd, call.idempotency_key, call.request_hash)
            self.engine.create(tx, saga_of(order_id), order_id, PlaceOrderData.placed(order_id, cmd))
            return order

        # A repeat of the key waits for what the first request committed.
        placed = await self.db.run(call.once(cmd, effect, exclude=orders.PLACE_HASH_EXCLUDES))
        if cmd.wait_ms:
            ended = await self.engine.outcome(saga_of(placed.order_id), cmd.wait_ms / 1000)
            if not call.replayed and isinstance(ended, c.Order):
                return ended  # this request's saga, read in its last unit of work
        return await self.db.read(lambda tx: orders.to_order(orders.get(tx, placed.order_id)))

    async def get(self, cmd: c.GetOrder, call: Call) -> c.Order:
        def read(tx: Tx) -> c.Order:
            row = orders.get(tx, cmd.order_id)
            order = shipments.with_returns(tx, row)
            order.saga = self.engine.view(tx, row["saga_id"])
            if self.shipping is not None and order.ship_saga_id:
                order.ship_saga = self.shipping.view(tx, order.ship_saga_id)
            if self.returning is not None:
                for taken_back in order.returns:
                    taken_back.saga = self.returning.view(tx, taken_back.return_id)
            return order

        return await self.db.read(read)

    async def list(self, cmd: c.ListOrders, call: Call) -> c.OrderList:
        return c.OrderList(orders=await self.db.read(lambda tx: orders.listing(tx, cmd)))

    async def cancel(self, cmd: c.CancelOrder, call: Call) -> c.Order:
        saga_id = saga_of(cmd.order_id)

        def effect(tx: Tx) -> c.Order:
            order = orders.request_cancel(tx, cmd)
            if orders.wants_cancel(order):  # the cancel and the saga's stop commit together: a crash keeps both
                self.engine.request_stop(tx, saga_id, Reason.CANCELLED, reopen=True)
            return order

        noted = await self.db.run(call.once(cmd, effect))
        # This request stopped the saga: its effect ran (it is no repeat of a key) and found it to stop.
        stopped = not call.replayed and orders.wants_cancel(noted)
        order = await self.db.read(lambda tx: orders.to_order(orders.get(tx, cmd.order_id)))
        if stopped or orders.wants_cancel(order):
            if not stopped:  # a repeat of the key: a cancel noted by an earlier version still turns the saga back
                await self.engine.stop_forward(saga_id, Reason.CANCELLED)
            await self.engine.wait(saga_id, CANCEL_WAIT_S)
            order = await self.db.read(lambda tx: orders.to_order(orders.get(tx, cmd.order_id)))
        return order

    async def ship(self, cmd: c.ShipOrder, call: Call) -> c.Order:
        """A CONFIRMED order turns SHIPPING and its shipment's saga starts, in one unit of work; answered once
        it has shipped (or turned back), or when `wait_ms` runs out (the shipment goes on)."""
        assert self.shipping is not None
        shipping = self.shipping
        shipment_id = new_id("saga")

        def effect(tx: Tx) -> c.Order:
            order, started = shipments.request_ship(tx, cmd, shipment_id)
            if started:
                data = ShipData(
                    order_id=cmd.order_id,
                    shipment_id=shipment_id,
                    total_cents=order.total_cents or 0,
                    currency=order.currency or "",
                )
                shipping.create(tx, shipment_id, cmd.order_id, data)
            return order

        asked = await self.db.run(call.once(cmd, effect, exclude=WAIT_EXCLUDES))
        if cmd.wait_ms and asked.status == c.OrderStatus.SHIPPING and asked.ship_saga_id:
            ended = await shipping.outcome(asked.ship_saga_id, cmd.wait_ms / 1000)
            if isinstance(ended, c.Order):
                return ended
        return await self._order(cmd.order_id)

    async def return_(self, cmd: c.ReturnOrder, call: Call) -> c.Order:
        """Units of a shipped order come back and their value is refunded: counted against what shipped
        in this unit of work, then received and refunded by the return's saga."""
        assert self.returning is not None
        returning = self.returning
        return_id = new_id("saga")

        def effect(tx: Tx) -> c.Order:
            lines, amount = shipments.request_return(tx, cmd, return_id)
            data = ReturnData(
                order_id=cmd.order_id,
                return_id=return_id,
                items=[OrderLine(sku=line["sku"], qty=line["qty"]) for line in lines],
                amount_cents=amount,
            )
            returning.create(tx, return_id, cmd.order_id, data)
            return shipments.with_returns(tx, orders.get(tx, cmd.order_id))

        asked = await self.db.run(call.once(cmd, effect, exclude=WAIT_EXCLUDES))
        started = [r.return_id for r in asked.returns if r.status == "RETURNING"]
        if cmd.wait_ms and started and not call.replayed:
            await returning.wait(max(started), cmd.wait_ms / 1000)
        return await self._order(cmd.order_id)

    async def _order(self, order_id: str) -> c.Order:
        return await self.db.read(lambda tx: shipments.with_returns(tx, orders.get(tx, order_id)))

    async def events(self, cmd: c.OrderEventsQuery, call: Call) -> c.EventList:
        await self.db.read(lambda tx: orders.get(tx, cmd.order_id))  # NOT_FOUND for an unknown order
        assert self.timeline is not None
        return c.EventList(order_id=cmd.order_id, events=await self.timeline(cmd.order_id))

    # -- operator endpoints ---------------------------------------------------

    def _saga_status(self, tx: Tx, saga_id: str) -> SagaStatus:
        """A saga's status in this unit of work; NOT_FOUND for an unknown saga."""
        status = self.engine.status(tx, saga_id)
        if status is None:
            raise NotFound(f"no saga {saga_id}", {"saga_id": saga_id})
        return status

    async def saga_list(self, cmd: c.SagaQuery, call: Call) -> c.SagaList:
        data = {"customer_id": cmd.customer_id} if cmd.customer_id else None  # a field of PlaceOrderData
        return c.SagaList(
            sagas=await self.db.read(
                lambda tx: self.engine.list(tx, cmd.status, cmd.stuck, cmd.limit, window=cmd, data=data)
            )
        )

    async def saga_get(self, cmd: c.SagaRef, call: Call) -> c.SagaView:
        view = await self.db.read(lambda tx: self.engine.view(tx, cmd.saga_id))
        if view is None:
            raise NotFound(f"no saga {cmd.saga_id}", {"saga_id": cmd.saga_id})
        return view

    async def saga_retry(self, cmd: c.SagaRef, call: Call) -> c.SagaView:
        def effect(tx: Tx) -> c.SagaRef:
            status = self._saga_status(tx, cmd.saga_id)
            if status not in ACTIVE:
                raise Conflict(f"saga {cmd.saga_id} is {status}; only a running saga can be retried")
            engine = self._engine_of(tx, cmd.saga_id)
            if not engine.driving(cmd.saga_id):  # its driver starts again shortly (a failure's backoff)
                raise Unavailable(f"saga {cmd.saga_id} is not being driven by this instance right now; try again")
            tx.after_commit(lambda: engine.retry_now(cmd.saga_id))
            return c.SagaRef(saga_id=cmd.saga_id)

        # With a key, the retry is asked for once: a repeat answers with the saga as it is now (or the same refusal).
        await self.db.run(call.once(cmd, effect, stored=c.SagaRef))
        return await self.saga_get(c.SagaRef(saga_id=cmd.saga_id), call)

    async def saga_abort(self, cmd: c.SagaAbort, call: Call) -> c.SagaView:
        def effect(tx: Tx) -> c.SagaRef:
            # The check and the stop in one unit: a saga that completes meanwhile is refused, never reopened.
            status = self._saga_status(tx, cmd.saga_id)
            if status != SagaStatus.RUNNING:
                raise Conflict(f"saga {cmd.saga_id} is {status}; only a running saga can be aborted")
            engine = self._engine_of(tx, cmd.saga_id)
            if engine is self.returning:
                raise Conflict(
                    f"saga {cmd.saga_id} is a return: it only goes forward (its units are counted as returned); "
                    "retry it instead",
                    {"saga_id": cmd.saga_id},
                )
            engine.request_stop(tx, cmd.saga_id, Reason.ABORTED, reopen=False, note=cmd.reason)
            return c.SagaRef(saga_id=cmd.saga_id)

        # With a key, a repeat does not abort again: it answers with the saga as it is now (or the same refusal).
        await self.db.run(call.once(cmd, effect, stored=c.SagaRef))
        engine = await self.db.read(lambda tx: self._engine_of(tx, cmd.saga_id))
        await engine.wait(cmd.saga_id, CANCEL_WAIT_S)
        return await self.saga_get(c.SagaRef(saga_id=cmd.saga_id), call)


def wire_breakers(k: Kernel) -> Breakers:
    """One breaker per participant, each change logged, exported and written as an event."""
    transitions: deque[tuple[str, str]] = deque(maxlen=100)
    background: set[asyncio.Task[Any]] = set()

    def on_breaker_change(target: str, old: str, new: str) -> None:
        log.warning("circuit breaker changed", extra={"target": target, "from": old, "to": new})
        k.metrics.breaker_state.labels(target).set(BREAKER_STATE.get(new, 0))
        transitions.append((old, new))
        data = {"target": target, "from": old, "to": new}
        task = asyncio.create_task(k.db.run(lambda tx: tx.emit("breaker_changed", target, data), wait=Acked.NONE))
        background.add(task)
        task.add_done_callback(background.discard)

    breakers = Breakers(k.settings.breaker, on_change=on_breaker_change)
    for step in (*PLACE_ORDER.steps, *SHIP_ORDER.steps, *RETURN_ORDER.steps):  # closed from the start
        if step.invoke is not None:
            k.metrics.breaker_state.labels(step.invoke.route.service).set(BREAKER_STATE["closed"])
    k.extras["breaker_transitions"] = transitions
    return breakers


async def build(k: Kernel) -> None:
    breakers = wire_breakers(k)
    client = Client(k.nc, breakers=breakers, timeout_s=k.settings.saga.step_timeout_ms / 1000)

    async def send(call: StepCall) -> Any:
        began, sent = time.perf_counter(), True
        try:
            return await client.call(
                call.route,
                call.command,
                call.reply,
                timeout_s=call.timeout_s,
                idempotency_key=call.idempotency_key,
            )
        except BreakerOpen:
            sent = False  # nothing went out: no latency to count
            raise
        finally:
            if sent:  # the step's latency, labelled as its attempts are
                k.metrics.child(k.metrics.step_duration, call.step, call.action).observe(time.perf_counter() - began)

    engine = SagaEngine(k.db, PLACE_ORDER, send, k.settings.saga, metrics=k.metrics)
    shipping = SagaEngine(k.db, SHIP_ORDER, send, k.settings.saga, metrics=k.metrics)
    returning = SagaEngine(k.db, RETURN_ORDER, send, k.settings.saga, metrics=k.metrics)
    k.extras.update(
        engine=engine,
        breakers=breakers,
        health=lambda: {
            "breakers": breakers.states(),
            "sagas_in_flight": engine.in_flight + shipping.in_flight + returning.in_flight,
            "counts": dict(engine.counts),
            "shipments": dict(shipping.counts),
            "returns": dict(returning.counts),
        },
    )
    handlers = Orders(
        k.db,
        engine,
        lambda order_id: order_events(k.js, k.settings.stream_name, order_id),
        shipping=shipping,
        returning=returning,
    )
    k.runner.add_all(
        (s.ORDERS_PLACE, handlers.place),
        (s.ORDERS_GET, handlers.get),
        (s.ORDERS_LIST, handlers.list),
        (s.ORDERS_CANCEL, handlers.cancel),
        (s.ORDERS_EVENTS, handlers.events),
        (s.ORDERS_SHIP, handlers.ship),
        (s.ORDERS_RETURN, handlers.return_),
        (s.SAGA_LIST, handlers.saga_list),
        (s.SAGA_GET, handlers.saga_get),
        (s.SAGA_RETRY, handlers.saga_retry),
        (s.SAGA_ABORT, handlers.saga_abort),
    )
    for each in (engine, shipping, returning):
        k.stack.push_async_callback(each.stop)
    for each in (engine, shipping, returning):
        await each.resume_all()


SPEC = ServiceSpec(
    name="orders",
    description="Orders and the place-order saga",
    # Files numbered by position had the saga's first migration, the orders', then the saga's three upgrades.
    schema=Schema(
        SAGA_MIGRATIONS, orders.MIGRATIONS, numbered=(("saga", 1), ("orders", 1), ("saga", 2), ("saga", 3), ("saga", 4))
    ),
    build=build,
    apply=replay.apply,
    after_replay=replay.after_replay,
)
