"""The scenes of `oms demo`, in order: each one line saying what it shows, and a function that shows it."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table

from bus import auth
from bus import contract as c
from bus import subjects as s
from bus.audit import run_audit
from bus.replay import recover
from bus.settings import SERVICES
from bus.stream import jetstream
from cli import stack
from cli.load import audit_table, results
from cli.loadgen import LoadPlan, LoadResult, Mix, ensure_stock, run_load
from cli.stage import Stage

HAPPY = ["order_created", "stock_reserved", "payment_authorized", "order_confirmed"]


async def healthy(stage: Stage) -> None:
    table = Table("service", "instance", "version", "answers $SRV.PING", title="Services")
    answered = 0
    for name in SERVICES:
        try:
            msg = await stage.admin.nc.request(f"$SRV.PING.{name}", b"", timeout=2)
            ping = json.loads(msg.data)
            table.add_row(name, ping["id"], ping["version"], "yes")
            answered += 1
        except Exception:
            table.add_row(name, "-", "-", "[red]no[/]")
    stage.show("ping", {"answered": answered}, table)
    stage.expect(answered == len(SERVICES), "orders, inventory and payment all answer")


async def catalog(stage: Stage) -> None:
    products = await stage.stock()
    stage.expect(bool(products), "the inventory service seeded its catalog")


async def happy(stage: Stage) -> None:
    before = (await stage.stock("KB-101", show=False))["KB-101"]
    order = await stage.place("alice", {"KB-101": 2})
    stage.expect(order.status is c.OrderStatus.CONFIRMED, "the order is CONFIRMED")
    stage.expect(order.total_cents == 2 * before.price_cents, "its total comes from the reserved unit prices")
    after = (await stage.stock("KB-101", show=False))["KB-101"]
    stage.expect(after.reserved == before.reserved + 2, "2 keyboards are now reserved for it")
    types = await stage.timeline(order.order_id)
    stage.expect(types == HAPPY, "four events tell its story: created, reserved, authorized, confirmed")


async def out_of_stock(stage: Stage) -> None:
    before = (await stage.stock("LAMP-1", show=False))["LAMP-1"]
    order = await stage.place("bob", {"LAMP-1": before.available + 2})
    stage.expect(order.failure_reason == "OUT_OF_STOCK", "the order FAILED with OUT_OF_STOCK")
    after = (await stage.stock("LAMP-1"))["LAMP-1"]
    stage.expect(after.reserved == before.reserved, "nothing is reserved: no lamp is oversold")
    try:
        await stage.client.call(s.PAYMENT_GET, {"order_id": order.order_id})
        charged = True
    except Exception:
        charged = False
    stage.expect(not charged, "and payment was never asked: nothing charged")


async def declined(stage: Stage) -> None:
    before = (await stage.stock("HD-404", show=False))["HD-404"]
    order = await stage.place("carol", {"HD-404": 1}, method="card_declined")
    stage.expect(order.failure_reason == "PAYMENT_DECLINED", "the order FAILED with PAYMENT_DECLINED")
    after = (await stage.stock("HD-404", show=False))["HD-404"]
    stage.expect(after.reserved == before.reserved, "the headphones it had reserved were released")
    types = await stage.timeline(order.order_id)
    stage.expect("step_compensated" in types, "the timeline shows the compensation")


async def idempotent(stage: Stage) -> None:
    key = f"demo-{uuid.uuid4()}"
    first = await stage.place("dave", {"MS-202": 1}, key=key)
    stage.say(f"the client retries with the same Idempotency-Key {key} ...")
    again = await stage.place("dave", {"MS-202": 1}, key=key, show=False)
    stage.expect(again.order_id == first.order_id, f"the repeat returns the same order {first.order_id}")
    listed = await stage.client.call(s.ORDERS_LIST, {"customer_id": "dave"})
    stage.expect(len(listed["orders"]) == 1, "dave has one order, charged once")


async def shipped_and_returned(stage: Stage) -> None:
    before = (await stage.stock("MN-303", show=False))["MN-303"]
    order = await stage.place("frank", {"MN-303": 2})
    stage.say(f"the warehouse ships {order.order_id} ...")
    shipped = await stage.fulfil(s.ORDERS_SHIP, {"order_id": order.order_id})
    stage.expect(shipped.status is c.OrderStatus.SHIPPED, "the order is SHIPPED")
    gone = (await stage.stock("MN-303", show=False))["MN-303"]
    stage.expect(gone.on_hand == before.on_hand - 2, "2 monitors left the stock (on hand and reserved both drop)")
    paid = await stage.client.call(s.PAYMENT_GET, {"order_id": order.order_id})
    stage.expect(paid["captured_cents"] == order.total_cents, "the payment is CAPTURED: the money is taken")
    try:
        await stage.client.call(s.ORDERS_CANCEL, {"order_id": order.order_id})
        refused = False
    except Exception:
        refused = True
    stage.expect(refused, "a shipped order cannot be cancelled: it is returned")
    stage.say("frank sends one monitor back ...")
    back = await stage.fulfil(s.ORDERS_RETURN, {"order_id": order.order_id, "items": [{"sku": "MN-303", "qty": 1}]})
    unit = next(line.unit_price_cents for line in order.items if line.sku == "MN-303")
    stage.expect(back.status is c.OrderStatus.PARTIALLY_RETURNED, "the order is PARTIALLY_RETURNED")
    stage.expect(back.refunded_cents == unit, "the monitor's price is refunded, at what frank paid for it")
    again = (await stage.stock("MN-303", show=False))["MN-303"]
    stage.expect(again.on_hand == gone.on_hand + 1, "and it is back on hand, to be sold again")


async def breaker(stage: Stage) -> None:
    stage.say("payment fails every authorize; three orders keep trying ...")
    await stage.chaos("payment", error_rate=1.0, endpoints=["authorize"])
    sent_before = await stage.requests_served("payment", "authorize")
    orders = [await stage.place(f"erin{i}", {"CB-505": 1}, wait_ms=0, show=False) for i in range(3)]
    opened = await stage.until("the breaker opens", lambda: _breaker_is(stage, "open"), timeout_s=10)
    if opened:
        at_open = await stage.requests_served("payment", "authorize")
        await asyncio.sleep(0.6)  # watch the breaker hold calls back for a while
        held = await stage.requests_served("payment", "authorize") - at_open
        stage.expect(held <= 1, f"while open, calls fail fast: {held} reached payment (at most one probe)")
    stage.say("payment recovers (faults cleared); a probe goes through and the breaker closes ...")
    await stage.chaos("payment")
    finals = [await stage.settled(o.order_id) for o in orders]
    stage.expect(all(f and f.status is c.OrderStatus.CONFIRMED for f in finals), "the waiting orders CONFIRM")
    changes = await stage.events_on("events.orders.breaker_changed.payment")
    path = " -> ".join([changes[0]["data"]["from"], *(e["data"]["to"] for e in changes)]) if changes else "none"
    stage.say(f"breaker: {path}")
    stage.expect("half_open" in path and path.endswith("closed"), "it opened, half-opened and closed again")
    sent = await stage.requests_served("payment", "authorize") - sent_before
    stage.say(f"{sent} authorize requests reached payment for {len(orders)} orders")
    stage.say("now payment drops half of its replies after doing the work ...")
    await stage.chaos("payment", drop_reply_rate=0.5, endpoints=["authorize"], seed=3)
    order = await stage.place("frank", {"CB-505": 1}, wait_ms=15_000, show=False)
    await stage.chaos("payment")
    final = await stage.settled(order.order_id)
    payments = await stage.admin.call(s.PAYMENT_LIST, {"status": "AUTHORIZED", "limit": 1000})
    charges = [p for p in payments["payments"] if p["order_id"] == order.order_id]
    stage.expect(
        final is not None and final.status is c.OrderStatus.CONFIRMED and len(charges) == 1,
        "a lost reply is retried with the same key: CONFIRMED, charged exactly once",
    )


async def _breaker_is(stage: Stage, state: str) -> bool:
    return (await stage.health("orders"))["breakers"].get("payment") == state


async def _mid_saga(stage: Stage, customer: str) -> c.Order:
    """An order held at its payment step: authorize is slowed, and the stock is already reserved."""
    await stage.chaos("payment", latency_ms=1500, endpoints=["authorize"])
    order = await stage.place(customer, {"WC-707": 1}, wait_ms=0, show=False)

    async def reserved() -> bool:
        return (await stage.order(order.order_id)).total_cents is not None

    await stage.until("the order's stock is reserved", reserved)
    return order


async def participant_killed(stage: Stage) -> None:
    order = await _mid_saga(stage, "grace")
    stage.say(f"kill -9 the payment service while {order.order_id} waits for its authorization ...")
    stack.kill(stage.settings, "payment", signal.SIGKILL)
    await asyncio.sleep(1.0)
    await stack.up(stage.settings)
    stage.say("payment restarted (without the slowdown); the saga retries with the same key")
    final = await stage.settled(order.order_id)
    stage.expect(final is not None and final.status is c.OrderStatus.CONFIRMED, "the order still CONFIRMS")


async def orchestrator_killed(stage: Stage) -> None:
    order = await _mid_saga(stage, "heidi")
    stage.say(f"kill -9 the order service in the middle of {order.order_id}'s saga ...")
    stack.kill(stage.settings, "orders", signal.SIGKILL)
    await asyncio.sleep(0.5)
    await stack.up(stage.settings)
    stage.say("the order service restarted and resumed every unfinished saga from SQLite")
    await stage.chaos("payment")
    final = await stage.settled(order.order_id)
    stage.expect(final is not None and final.status is c.OrderStatus.CONFIRMED, "the order still CONFIRMS")


async def rebuilt(stage: Stage) -> None:
    before = await stage.stock(show=False)
    stage.say("stop inventory and delete its database ...")
    stack.kill(stage.settings, "inventory", signal.SIGTERM)
    await stage.until("inventory stops", lambda: _gone(stage, "inventory"), timeout_s=15)
    for suffix in ("", "-wal", "-shm"):
        stage.settings.db_path("inventory").with_name(f"inventory.db{suffix}").unlink(missing_ok=True)
    from inventory_svc.service import SPEC  # the demo may rebuild a service's database itself

    stats = await recover(auth.login(stage.settings, SPEC.name), SPEC)  # as the service's own NATS user
    stage.say(f"rebuilt from {stats.applied} events in {stats.seconds:.2f}s ({stats.rate:,.0f} events/s)")
    await stack.up(stage.settings)
    after = await stage.stock(show=False)
    stage.expect(
        {k: v.model_dump() for k, v in after.items()} == {k: v.model_dump() for k, v in before.items()},
        "the rebuilt stock equals the stock before, SKU for SKU",
    )


async def _gone(stage: Stage, name: str) -> bool:
    return stack.running_pid(stage.settings, name) is None


async def load(stage: Stage) -> None:
    plan = LoadPlan(orders=600, concurrency=32, mix=Mix(declined=0.1, out_of_stock=0.05), seed=1)
    result = await run_load(stage.settings, plan)
    stage.show("load", result.to_dict(), Group(*results(result)))
    stage.expect(result.completed == plan.orders, f"all {plan.orders} orders answered")


async def leader_killed(stage: Stage) -> None:
    nodes = stack.nats_names(stage.settings)
    if len(nodes) < 3:
        stage.say("one nats-server here: `oms demo --cluster 3` plays this scene")
        return
    leader = await stage.stream_leader()
    stage.say(f"{len(nodes)} nats-servers; OMS_EVENTS has 3 replicas and {leader} leads it")
    plan = LoadPlan(orders=300, concurrency=8, rate=60, seed=2, wait_ms=15_000)
    killed: list[str] = []

    def kill_the_leader(progress: LoadResult) -> None:
        if progress.completed >= 60 and not killed and leader is not None:
            stack.kill(stage.settings, leader, signal.SIGKILL)
            killed.append(leader)

    await ensure_stock(stage.admin, plan)  # they all confirm unless something is lost
    stage.say(f"orders flow at {plan.rate:.0f}/s; after the 60th, kill -9 {leader} ...")
    result = await run_load(stage.settings, plan, on_progress=kill_the_leader)
    now = await stage.until("a new leader", lambda: stage.stream_leader(other_than=leader), timeout_s=30)
    slowest, median = result.percentile(1.0) * 1000, result.percentile(0.5) * 1000
    stage.say(f"{now} leads OMS_EVENTS now; the slowest order took {slowest:,.0f} ms (the election)")
    stage.say(f"the median {median:,.0f} ms; outcomes {dict(result.outcomes)}, errors {dict(result.errors)}")
    stage.expect(bool(killed) and now not in (None, leader), f"{leader} was killed and another node took over")
    stage.expect(
        result.outcomes["CONFIRMED"] == plan.orders and not result.errors,
        f"all {plan.orders} orders CONFIRMED: the clients sent again with their keys, nothing was lost",
    )
    await stack.up(stage.settings)
    await stage.until("every replica to catch up", stage.replicas_current, timeout_s=30)
    stage.expect(True, f"`oms up` restarted {leader}, and its copy of the stream caught up")


async def audit(stage: Stage) -> None:
    js = await jetstream(stage.admin.nc, stage.settings.stream_name)
    report = await run_audit(stage.admin, js, stage.settings.stream_name, stage.settings.saga)
    stage.show("audit", report.to_dict(), audit_table(report))
    stage.expect(report.ok, "every invariant holds: nothing oversold, nobody double-charged, nothing lost")


@dataclass(frozen=True)
class Scene:
    name: str
    description: str
    run: Callable[[Stage], Awaitable[None]]


SCENES: list[Scene] = [
    Scene("health", "the three services answer $SRV.PING", healthy),
    Scene("catalog", "the catalog the inventory service seeds on its first start", catalog),
    Scene("happy", "2 keyboards paid by card: reserve, authorize, confirm, and the timeline", happy),
    Scene("out-of-stock", "more lamps than there are: the saga stops at the reservation", out_of_stock),
    Scene("declined", "a declined card: the reservation is compensated (released)", declined),
    Scene("idempotent", "the same Idempotency-Key twice: one order, one charge", idempotent),
    Scene(
        "ship-return",
        "a monitor order shipped (stock leaves, money taken), one returned (refunded)",
        shipped_and_returned,
    ),
    Scene("breaker", "payment fails, then drops replies: the breaker opens, fails fast, closes", breaker),
    Scene("participant-killed", "payment killed -9 mid-saga: the saga finishes after restart", participant_killed),
    Scene("orders-killed", "the order service killed -9 mid-saga: it resumes the saga", orchestrator_killed),
    Scene("rebuild", "inventory's database lost: rebuilt by replaying OMS_EVENTS", rebuilt),
    Scene("load", "600 orders at concurrency 32, with declines and stock-outs", load),
    Scene(
        "leader-killed",
        "the stream's leader node killed -9 while orders flow: a new leader, nothing lost",
        leader_killed,
    ),
    Scene("audit", "the invariant audit over everything above", audit),
]
