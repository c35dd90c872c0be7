"""Order endpoints: place, get, list, cancel, events, and the saga operator's endpoints."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from bus import contract as c
from bus import subjects as s
from bus.app import Kernel, ServiceSpec
from bus.breaker import Breakers
from bus.client import Client
from bus.db import Tx
from bus.errors import BreakerOpen, Conflict, NotFound, OmsError, Unavailable
from bus.ids import new_id
from bus.saga import ACTIVE, SAGA_MIGRATIONS, SAGA_UPGRADES, SagaEngine, SagaRun
from bus.service import Call
from order_svc import replay, store
from order_svc.saga import PLACE_ORDER
from order_svc.timeline import order_events

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 10.0
BREAKER_STATE = {"closed": 0, "half_open": 1, "open": 2}


def saga_of(order_id: str) -> str:
    """An order's saga id follows from its id, so a repeated request finds it without a lookup."""
    return "saga_" + order_id.removeprefix("ord_")


def saga_status(tx: Tx, saga_id: str) -> str:
    """A saga's status in this unit of work; NOT_FOUND for an unknown saga."""
    row = tx.one("SELECT status FROM sagas WHERE saga_id = ?", (saga_id,))
    if row is None:
        raise NotFound(f"no saga {saga_id}", {"saga_id": saga_id})
    return str(row["status"])


@dataclass
class Orders:
    k: Kernel
    engine: SagaEngine

    async def place(self, cmd: c.PlaceOrder, call: Call) -> c.Order:
        order_id = new_id("ord")
        saga_id = saga_of(order_id)
        created: list[SagaRun] = []

        def effect(tx: Tx) -> c.Order:
            order = store.create(tx, order_id, saga_id, cmd, call.idempotency_key, call.request_hash)
            data = {
                "order_id": order_id,
                "customer_id": cmd.customer_id,
                "items": [line.model_dump() for line in cmd.items],
                "payment_method": cmd.payment_method,
            }
            created.append(self.engine.create(tx, saga_id, order_id, data))
            return order

        outcome, events = await self.k.db.commit(call.once(cmd, effect, exclude=store.PLACE_HASH_EXCLUDES))
        if isinstance(outcome, OmsError):
            raise outcome
        # The order must be in JetStream before anything happens on its behalf: were this database lost
        # first, a rebuild would not know the order or its key, and the client's retry would reserve and
        # charge a second time. A repeat of the key waits for what the first request committed.
        await self.k.db.settled(events)
        if created:
            self.engine.start(created[0])
        placed_id = outcome.order_id if isinstance(outcome, c.Order) else outcome["order_id"]
        if cmd.wait_ms:
            await self.engine.wait(saga_of(placed_id), cmd.wait_ms / 1000)
            run = created[0] if created else None
            if run is not None and run.status not in ACTIVE and isinstance(run.result, c.Order):
                return run.result  # read in the saga's last unit of work
        return await self.k.db.read(lambda tx: store.to_order(store.get(tx, placed_id)))

    async def get(self, cmd: c.GetOrder, call: Call) -> c.Order:
        def read(tx: Tx) -> c.Order:
            row = store.get(tx, cmd.order_id)
            order = store.to_order(row)
            order.saga = self.engine.view(tx, row["saga_id"])
            return order

        return await self.k.db.read(read)

    async def list(self, cmd: c.ListOrders, call: Call) -> c.OrderList:
        return c.OrderList(orders=await self.k.db.read(lambda tx: store.listing(tx, cmd)))

    async def cancel(self, cmd: c.CancelOrder, call: Call) -> c.Order:
        saga_id = saga_of(cmd.order_id)
        stop: list[SagaRun | None] = []

        def effect(tx: Tx) -> c.Order:
            order = store.request_cancel(tx, cmd)
            if store.wants_cancel(order):  # the cancel and the saga's stop commit together: a crash keeps both
                stop.append(self.engine.request_stop(tx, saga_id, "CANCELLED", reopen=True))
            return order

        await self.k.db.write(call.once(cmd, effect))
        if stop:
            await self.engine.stopped(stop[0])
        order = await self.k.db.read(lambda tx: store.to_order(store.get(tx, cmd.order_id)))
        if stop or store.wants_cancel(order):
            if not stop:  # a repeat of the key: a cancel noted by an earlier version still turns the saga back
                await self.engine.stop_forward(saga_id, "CANCELLED")
            await self.engine.wait(saga_id, CANCEL_WAIT_S)
            order = await self.k.db.read(lambda tx: store.to_order(store.get(tx, cmd.order_id)))
        return order

    async def events(self, cmd: c.OrderEventsQuery, call: Call) -> c.EventList:
        await self.k.db.read(lambda tx: store.get(tx, cmd.order_id))  # NOT_FOUND for an unknown order
        return c.EventList(
            order_id=cmd.order_id,
            events=await order_events(self.k.js, self.k.settings.stream_name, cmd.order_id),
        )

    # -- operator endpoints ---------------------------------------------------

    async def saga_list(self, cmd: c.SagaQuery, call: Call) -> c.SagaList:
        data = {"customer_id": cmd.customer_id} if cmd.customer_id else None
        return c.SagaList(
            sagas=await self.k.db.read(
                lambda tx: self.engine.list(tx, cmd.status, cmd.stuck, cmd.limit, window=cmd, data=data)
            )
        )

    async def saga_get(self, cmd: c.SagaRef, call: Call) -> c.SagaView:
        view = await self.k.db.read(lambda tx: self.engine.view(tx, cmd.saga_id))
        if view is None:
            raise NotFound(f"no saga {cmd.saga_id}", {"saga_id": cmd.saga_id})
        return view

    async def saga_retry(self, cmd: c.SagaRef, call: Call) -> c.SagaView:
        asked: list[bool] = []

        def effect(tx: Tx) -> c.SagaRef:
            status = saga_status(tx, cmd.saga_id)
            if status not in ACTIVE:
                raise Conflict(f"saga {cmd.saga_id} is {status}; only a running saga can be retried")
            if not self.engine.driving(cmd.saga_id):  # its driver starts again shortly (a failure's backoff)
                raise Unavailable(f"saga {cmd.saga_id} is not being driven by this instance right now; try again")
            asked.append(True)
            return c.SagaRef(saga_id=cmd.saga_id)

        # With a key, the retry is asked for once: a repeat answers with the saga as it is now (or the same refusal).
        await self.k.db.write(call.once(cmd, effect))
        if asked:
            self.engine.retry_now(cmd.saga_id)
        return await self.saga_get(c.SagaRef(saga_id=cmd.saga_id), call)

    async def saga_abort(self, cmd: c.SagaAbort, call: Call) -> c.SagaView:
        stop: list[SagaRun | None] = []

        def effect(tx: Tx) -> c.SagaRef:
            # The check and the stop in one unit: a saga that completes meanwhile is refused, never reopened.
            status = saga_status(tx, cmd.saga_id)
            if status != "RUNNING":
                raise Conflict(f"saga {cmd.saga_id} is {status}; only a running saga can be aborted")
            stop.append(self.engine.request_stop(tx, cmd.saga_id, "ABORTED", reopen=False, note=cmd.reason))
            return c.SagaRef(saga_id=cmd.saga_id)

        # With a key, a repeat does not abort again: it answers with the saga as it is now (or the same refusal).
        await self.k.db.write(call.once(cmd, effect))
        if stop:
            await self.engine.stopped(stop[0])
        await self.engine.wait(cmd.saga_id, CANCEL_WAIT_S)
        return await self.saga_get(c.SagaRef(saga_id=cmd.saga_id), call)


async def build(k: Kernel) -> None:
    transitions: deque[tuple[str, str]] = deque(maxlen=100)
    background: set[asyncio.Task[Any]] = set()

    def on_breaker_change(target: str, old: str, new: str) -> None:
        log.warning("circuit breaker changed", extra={"target": target, "from": old, "to": new})
        k.metrics.breaker_state.labels(target).set(BREAKER_STATE.get(new, 0))
        transitions.append((old, new))
        data = {"target": target, "from": old, "to": new}
        task = asyncio.create_task(k.db.commit(lambda tx: tx.emit("breaker_changed", target, data)))
        background.add(task)
        task.add_done_callback(background.discard)

    breakers = Breakers(k.settings.breaker, on_change=on_breaker_change)
    for step in PLACE_ORDER.steps:  # every breaker shows as closed from the start, not only once it moved
        if step.invoke is not None:
            k.metrics.breaker_state.labels(step.invoke.route.service).set(BREAKER_STATE["closed"])
    client = Client(k.nc, breakers=breakers, timeout_s=k.settings.saga.step_timeout_ms / 1000)

    async def send(route: s.Route, payload: Any, *, timeout_s: float, idempotency_key: str) -> dict[str, Any]:
        # The engine's key is `{saga_id}:{step}:{action}`: the step's latency, labelled as its attempts are.
        _, step, action = idempotency_key.split(":") if idempotency_key.count(":") == 2 else ("", route.subject, "")
        began, sent = time.perf_counter(), True
        try:
            return await client.call(route, payload, timeout_s=timeout_s, idempotency_key=idempotency_key)
        except BreakerOpen:
            sent = False  # nothing went out: no latency to count
            raise
        finally:
            if sent:
                k.metrics.child(k.metrics.step_duration, step, action).observe(time.perf_counter() - began)

    engine = SagaEngine(k.db, PLACE_ORDER, send, k.settings.saga, metrics=k.metrics)
    k.extras.update(
        engine=engine,
        breakers=breakers,
        breaker_transitions=transitions,
        health=lambda: {
            "breakers": breakers.states(),
            "sagas_in_flight": engine.in_flight,
            "counts": dict(engine.counts),
        },
    )
    orders = Orders(k, engine)
    for route, handler in (
        (s.ORDERS_PLACE, orders.place),
        (s.ORDERS_GET, orders.get),
        (s.ORDERS_LIST, orders.list),
        (s.ORDERS_CANCEL, orders.cancel),
        (s.ORDERS_EVENTS, orders.events),
        (s.SAGA_LIST, orders.saga_list),
        (s.SAGA_GET, orders.saga_get),
        (s.SAGA_RETRY, orders.saga_retry),
        (s.SAGA_ABORT, orders.saga_abort),
    ):
        k.runner.add(route, handler)
    k.stack.push_async_callback(engine.stop)
    await engine.resume_all()


SPEC = ServiceSpec(
    name="orders",
    description="Orders and the place-order saga",
    migrations=(*SAGA_MIGRATIONS, *store.MIGRATIONS, *SAGA_UPGRADES),  # applied by position: append only
    build=build,
    apply=replay.apply,
    settle=replay.settle,
)
