"""Recovery by replay: each service rebuilds its SQLite file from OMS_EVENTS and carries on as before."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats
import pytest

from bus import subjects as s
from bus.app import Kernel, ServiceSpec, running
from bus.audit import run_audit
from bus.client import Client
from bus.errors import Conflict, OmsError
from bus.replay import REPLAYED_THROUGH, ReplayError, rebuild
from bus.settings import SagaSettings, Settings
from inventory_svc.service import SPEC as INVENTORY
from order_svc.service import SPEC as ORDERS
from payment_svc.service import SPEC as PAYMENT
from tests.conftest import outlast_duplicate_window, stream_events, wait_for

TERMINAL = ("CONFIRMED", "FAILED", "CANCELLED", "SHIPPED", "PARTIALLY_RETURNED", "RETURNED")
# What a rebuilt saga cannot know exactly: when its steps ran (the events carry their own times).
SAGA_TIMINGS = {"created_at", "updated_at", "deadline_at", "next_retry_at"}
STEP_TIMINGS = {"started_at", "finished_at", "duration_ms"}


class Services:
    """The three services in-process, each stopped and started on its own, plus a client of them."""

    def __init__(self, settings: Settings, conn: Any) -> None:
        self.settings = settings
        self.nc = conn
        self.client = Client(conn, timeout_s=15)
        self.js = conn.jetstream()
        self._running: dict[str, AsyncExitStack] = {}

    async def start(self, spec: ServiceSpec, **options: Any) -> Kernel:
        stack = AsyncExitStack()
        kernel = await stack.enter_async_context(running(spec, self.settings, serve_metrics=False, **options))
        self._running[spec.name] = stack
        return kernel

    async def stop(self, spec: ServiceSpec) -> None:
        await self._running.pop(spec.name).aclose()

    async def close(self) -> None:
        for name in list(self._running)[::-1]:
            await self._running.pop(name).aclose()

    def lose_database(self, spec: ServiceSpec) -> None:
        path = self.settings.db_path(spec.name)
        for lost in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            lost.unlink(missing_ok=True)
        assert not path.exists()


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    conn = await nats.connect(settings.nats_url)
    svc = Services(settings, conn)
    try:
        for spec in (INVENTORY, PAYMENT, ORDERS):
            await svc.start(spec)
        yield svc
    finally:
        await svc.close()
        await conn.close()


# -- what the read endpoints show ---------------------------------------------


async def inventory_view(svc: Services) -> dict[str, Any]:
    stock = await svc.client.call(s.INVENTORY_STOCK, {})
    reservations = await svc.client.call(s.INVENTORY_RESERVATIONS, {"limit": 1000})
    return {"stock": stock, "reservations": reservations}


async def payment_view(svc: Services) -> dict[str, Any]:
    return await svc.client.call(s.PAYMENT_LIST, {"limit": 1000})


def untimed(saga: dict[str, Any] | None) -> dict[str, Any] | None:
    """A saga's view without its timings (what a rebuild cannot know exactly)."""
    if saga is None:
        return None
    kept = {k: v for k, v in saga.items() if k not in SAGA_TIMINGS}
    kept["steps"] = [{k: v for k, v in step.items() if k not in STEP_TIMINGS} for step in saga["steps"]]
    return kept


async def orders_view(svc: Services) -> dict[str, Any]:
    """orders.list and orders.get of each order; its sagas' step timings are left out (its placement's,
    its shipment's and each return's)."""
    listed = await svc.client.call(s.ORDERS_LIST, {"limit": 1000})
    got = {}
    for order in listed["orders"]:
        full = await svc.client.call(s.ORDERS_GET, {"order_id": order["order_id"]})
        full["saga"], full["ship_saga"] = untimed(full["saga"]), untimed(full["ship_saga"])
        full["returns"] = [{**r, "saga": untimed(r["saga"])} for r in full["returns"]]
        got[order["order_id"]] = full
    return {"list": listed, "get": got}


VIEWS = {"inventory": inventory_view, "payment": payment_view, "orders": orders_view}


async def place(svc: Services, items=(("KB-101", 1),), method="card", key=None, wait_ms=10_000) -> dict[str, Any]:
    body = {"customer_id": "c1", "items": [{"sku": k, "qty": q} for k, q in items], "payment_method": method}
    return await svc.client.call(s.ORDERS_PLACE, body | {"wait_ms": wait_ms}, idempotency_key=key)


async def some_history(svc: Services) -> list[dict[str, Any]]:
    """Orders of every kind, a restock of a new SKU and a release tombstone."""
    await svc.client.call(s.INVENTORY_RESTOCK, {"sku": "NEW-1", "qty": 7, "name": "New thing", "price_cents": 123})
    await svc.client.call(s.INVENTORY_RESTOCK, {"sku": "KB-101", "qty": 5})
    await svc.client.call(s.INVENTORY_RELEASE, {"order_id": "ord_never_placed"})
    orders = [
        await place(svc, items=(("KB-101", 2), ("NEW-1", 1)), key="k-1"),
        await place(svc, items=(("MS-202", 1),), method="card_declined"),
        await place(svc, items=(("LAMP-1", 99),)),
        await place(svc, items=(("HD-404", 1),)),
    ]
    cancelled = await svc.client.call(s.ORDERS_CANCEL, {"order_id": orders[-1]["order_id"], "reason": "changed mind"})
    assert [o["status"] for o in orders[:3]] + [cancelled["status"]] == ["CONFIRMED", "FAILED", "FAILED", "CANCELLED"]
    # And past confirmation: one order shipped, one shipped and taken back in two returns.
    shipped = await place(svc, items=(("KB-101", 1),))
    returned = await place(svc, items=(("MS-202", 3), ("NEW-1", 1)))
    for order in (shipped, returned):
        assert (await svc.client.call(s.ORDERS_SHIP, {"order_id": order["order_id"]}))["status"] == "SHIPPED"
    first_back = {"order_id": returned["order_id"], "items": [{"sku": "MS-202", "qty": 1}], "reason": "too many"}
    assert (await svc.client.call(s.ORDERS_RETURN, first_back))["status"] == "PARTIALLY_RETURNED"
    assert (await svc.client.call(s.ORDERS_RETURN, {"order_id": returned["order_id"]}))["status"] == "RETURNED"
    return [*orders, shipped, returned]


async def audit_clean(svc: Services) -> None:
    report = await run_audit(svc.client, svc.js, svc.settings.stream_name, svc.settings.saga)
    assert report.ok, json.dumps(report.to_dict(), indent=1)


def tables(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr) for name in names}
    finally:
        conn.close()


async def terminal(svc: Services, order_ids: list[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    async def all_ended() -> list[dict[str, Any]] | None:
        got = [await svc.client.call(s.ORDERS_GET, {"order_id": oid}) for oid in order_ids]
        return got if all(o["status"] in TERMINAL for o in got) else None

    return await wait_for(all_ended, timeout=timeout, what="every order to end")


# -- the tests ----------------------------------------------------------------


@pytest.mark.parametrize("spec", [INVENTORY, PAYMENT, ORDERS], ids=lambda spec: spec.name)
async def test_a_service_rebuilt_from_the_stream_shows_exactly_what_it_showed_before(services, spec):
    await some_history(services)
    before = await VIEWS[spec.name](services)
    await services.stop(spec)
    services.lose_database(spec)

    stats = await rebuild(services.settings, spec, services.js)

    assert stats.applied == stats.total > 0 and stats.rate > 0
    await services.start(spec)
    assert await VIEWS[spec.name](services) == before
    await audit_clean(services)


async def test_the_rebuilt_services_carry_on_and_a_repeated_key_still_finds_its_order(services):
    first = (await some_history(services))[0]
    for spec in (ORDERS, PAYMENT, INVENTORY):
        await services.stop(spec)
        services.lose_database(spec)
        await rebuild(services.settings, spec, services.js)
    for spec in (INVENTORY, PAYMENT, ORDERS):
        await services.start(spec)

    again = await place(services, items=(("KB-101", 2), ("NEW-1", 1)), key="k-1")
    assert again["order_id"] == first["order_id"] and again["status"] == "CONFIRMED"
    with pytest.raises(Conflict):
        await place(services, items=(("KB-101", 3),), key="k-1")
    fresh = await place(services, items=(("NEW-1", 2),))
    assert fresh["status"] == "CONFIRMED"
    stock = await services.client.call(s.INVENTORY_STOCK, {"sku": "NEW-1"})
    assert stock["products"][0]["reserved"] == 3  # the catalog seed did not run again either
    cancelled = await services.client.call(s.ORDERS_CANCEL, {"order_id": first["order_id"]})
    assert cancelled["status"] == "CANCELLED"  # the rebuilt saga knows which steps to compensate
    await audit_clean(services)


@pytest.mark.parametrize("spec", [INVENTORY, PAYMENT, ORDERS], ids=lambda spec: spec.name)
async def test_a_rebuild_applies_each_event_once_however_often_the_stream_holds_it(services, spec):
    await some_history(services)
    before = await VIEWS[spec.name](services)
    # Every event of the service stored a second time after all the others, newest first, as an outbox sent
    # again after the duplicate window stores it (the same event id; published here without Nats-Msg-Id):
    # each copy comes after what followed its original. A copy of KB-101's first restock, for one, carries
    # the on_hand that the later restock moved on from.
    own = [e for e in await stream_events(services.nc, services.settings) if e["service"] == spec.name]
    for event in reversed(own):
        body = {k: v for k, v in event.items() if k != "subject"}
        await services.js.publish(event["subject"], json.dumps(body).encode(), stream=services.settings.stream_name)
    await services.stop(spec)
    services.lose_database(spec)

    stats = await rebuild(services.settings, spec, services.js)

    await services.start(spec)
    assert await VIEWS[spec.name](services) == before
    assert stats.applied == stats.total == 2 * len(own) and stats.repeats == len(own)


@pytest.mark.parametrize("spec", [INVENTORY, PAYMENT, ORDERS], ids=lambda spec: spec.name)
async def test_rebuilding_twice_gives_the_same_database(services, spec):
    await some_history(services)
    await services.stop(spec)
    path = services.settings.db_path(spec.name)

    first = await rebuild(services.settings, spec, services.js)
    once = tables(path)
    second = await rebuild(services.settings, spec, services.js)

    assert tables(path) == once and first.applied == second.applied
    assert dict(once["meta"])[REPLAYED_THROUGH] == str(first.last_seq)
    assert once["outbox"] == []
    assert not path.with_name(path.name + ".rebuild").exists()
    assert not path.with_name(path.name + "-wal").exists()


async def test_reading_in_many_small_windows_gives_the_same_database(services, monkeypatch):
    await some_history(services)
    await services.stop(ORDERS)
    path = services.settings.db_path(ORDERS.name)
    whole = await rebuild(services.settings, ORDERS, services.js)
    expected = tables(path)

    monkeypatch.setattr("bus.reader.WINDOW", 3)
    windowed = await rebuild(services.settings, ORDERS, services.js)

    assert tables(path) == expected and windowed.applied == whole.applied > 3 * 3


async def test_progress_is_reported_up_to_the_total(services):
    await some_history(services)
    await services.stop(INVENTORY)
    seen: list[tuple[int, int]] = []

    stats = await rebuild(
        services.settings, INVENTORY, services.js, progress=lambda done, total: seen.append((done, total))
    )

    assert seen[0] == (0, stats.total) and seen[-1] == (stats.total, stats.total)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


async def test_sagas_caught_mid_flight_resume_after_the_rebuild_and_finish(settings, services):
    # Sagas must outwait the payment outage however slow the machine: retries never run out here.
    patient = settings.model_copy(update={"saga": SagaSettings(retry_max_interval_ms=200, retry_max_attempts=1000)})
    services.settings = patient
    await services.stop(ORDERS)
    await services.start(ORDERS)
    await services.stop(PAYMENT)  # authorize gets no responders: every saga waits at its second step
    placed = [await place(services, items=(("CB-505", 1),), wait_ms=0) for _ in range(5)]
    ids = [o["order_id"] for o in placed]

    async def all_reserved() -> bool:
        listed = await services.client.call(s.INVENTORY_RESERVATIONS, {"status": "ACTIVE"})
        return {r["order_id"] for r in listed["reservations"]} >= set(ids)

    await wait_for(all_reserved, what="every order's stock to be reserved")
    await services.stop(ORDERS)
    services.lose_database(ORDERS)

    await services.start(PAYMENT)
    await services.start(ORDERS, recover=True)

    ended = await terminal(services, ids)
    assert [o["status"] for o in ended] == ["CONFIRMED"] * len(ids)
    assert all(o["total_cents"] == 1200 for o in ended)  # priced again by the re-sent reserve
    await audit_clean(services)


async def test_a_saga_caught_compensating_finishes_its_compensation_after_the_rebuild(services):
    # The release keeps failing, so the declined order stays COMPENSATING with its stock still held.
    await services.client.request("chaos.inventory.set", {"error_rate": 1.0, "endpoints": ["release"]})
    placed = await place(services, items=(("DK-606", 2),), method="card_declined", wait_ms=0)

    async def compensating() -> bool:
        got = await services.client.call(s.ORDERS_GET, {"order_id": placed["order_id"]})
        return got["status"] == "COMPENSATING"

    await wait_for(compensating, what="the order to be compensating")
    await services.stop(ORDERS)
    services.lose_database(ORDERS)
    await rebuild(services.settings, ORDERS, services.js)
    await services.client.request("chaos.inventory.clear", {})
    await services.start(ORDERS)

    (ended,) = await terminal(services, [placed["order_id"]])
    assert ended["status"] == "FAILED" and ended["failure_reason"] == "PAYMENT_DECLINED"
    assert ended["total_cents"] == 2 * 15900  # the pricing came back with order_compensating
    payment = await services.client.call(s.PAYMENT_GET, {"order_id": placed["order_id"]})
    assert payment["status"] == "DECLINED"  # a step that got a final answer is not compensated
    await audit_clean(services)


async def test_a_saga_rebuilt_past_its_deadline_undoes_every_step_that_might_have_run(settings, services):
    quick = settings.model_copy(update={"saga": SagaSettings(deadline_ms=1500, retry_max_attempts=100)})
    services.settings = quick
    await services.stop(ORDERS)
    await services.start(ORDERS)
    # Payment charges but its reply is lost: only payment's own events know the order was charged.
    await services.client.request("chaos.payment.set", {"drop_reply_rate": 1.0, "endpoints": ["authorize"]})
    placed = await place(services, items=(("CB-505", 1),), wait_ms=0)

    async def charged() -> bool:
        listed = await services.client.call(s.PAYMENT_LIST, {"status": "AUTHORIZED"})
        return placed["order_id"] in {p["order_id"] for p in listed["payments"]}

    await wait_for(charged, what="the payment to be authorized")
    await services.stop(ORDERS)
    services.lose_database(ORDERS)
    await services.client.request("chaos.payment.clear", {})
    deadline = time.time() + quick.saga.deadline_ms / 1000
    await wait_for(lambda: time.time() > deadline, what="the saga's deadline to pass")

    await rebuild(quick, ORDERS, services.js)
    await services.start(ORDERS)

    (ended,) = await terminal(services, [placed["order_id"]])
    assert ended["status"] == "FAILED" and ended["failure_reason"] == "DEADLINE_EXCEEDED"
    payment = await services.client.call(s.PAYMENT_GET, {"order_id": placed["order_id"]})
    assert payment["status"] == "VOIDED"  # the authorization is voided: nothing was captured
    await audit_clean(services)


async def with_quick_sagas(settings: Settings, services: Services) -> Settings:
    """The order service restarted with a 1.5 s saga deadline and quick retries; the settings it runs with."""
    quick = settings.model_copy(
        update={"saga": SagaSettings(deadline_ms=1500, retry_max_attempts=1000, retry_max_interval_ms=200)}
    )
    services.settings = quick
    await services.stop(ORDERS)
    await services.start(ORDERS)
    return quick


async def past_deadline_and_retry_cap(quick: Settings) -> None:
    """Wait until a saga started now is past its deadline and the retry cap (what invariant 4 allows)."""
    grace = (quick.saga.retry_max_interval_ms + quick.saga.step_timeout_ms) / 1000
    overdue = time.time() + quick.saga.deadline_ms / 1000 + grace + 0.5
    await wait_for(lambda: time.time() > overdue, what="the deadline and the retry cap to pass")


async def invariant_4(services: Services, quick: Settings) -> dict[str, Any]:
    report = await run_audit(services.client, services.js, quick.stream_name, quick.saga)
    (late,) = [c for c in report.to_dict()["checks"] if c["invariant"] == 4]
    return late


async def test_the_audit_names_an_order_left_compensating_past_its_deadline_and_checks_every_order(settings, services):
    quick = await with_quick_sagas(settings, services)
    done = await place(services, items=(("KB-101", 1),), method="card_declined")  # an order that ended
    assert done["status"] == "FAILED"
    # Payment keeps failing until the deadline turns the saga back; then the release keeps failing too.
    await services.client.request("chaos.payment.set", {"error_rate": 1.0, "endpoints": ["authorize"]})
    await services.client.request("chaos.inventory.set", {"error_rate": 1.0, "endpoints": ["release"]})
    placed = await place(services, items=(("CB-505", 1),), wait_ms=0)
    await past_deadline_and_retry_cap(quick)

    got = await services.client.call(s.ORDERS_GET, {"order_id": placed["order_id"]})
    assert got["status"] == "COMPENSATING", got["status"]
    late = await invariant_4(services, quick)
    listed = await services.client.call(s.ORDERS_LIST, {"limit": 1000})
    assert late["checked"] == len(listed["orders"]) >= 2  # every order, the ended ones too
    assert late["violations"] == 1 and placed["order_id"] in late["offending"][0], late
    assert done["order_id"] not in json.dumps(late)

    await services.client.request("chaos.inventory.clear", {})
    await services.client.request("chaos.payment.clear", {})
    (ended,) = await terminal(services, [placed["order_id"]])
    assert ended["status"] == "FAILED" and ended["failure_reason"] == "DEADLINE_EXCEEDED"
    await audit_clean(services)


async def test_the_audit_names_an_order_left_shipping_past_its_shipments_deadline(settings, services):
    quick = await with_quick_sagas(settings, services)
    order = await place(services, items=(("CB-505", 1),))
    assert order["status"] == "CONFIRMED"
    # The capture keeps failing until the shipment's deadline turns it back; then the uncommit keeps failing.
    await services.client.request("chaos.payment.set", {"error_rate": 1.0, "endpoints": ["capture"]})
    await services.client.request("chaos.inventory.set", {"error_rate": 1.0, "endpoints": ["uncommit"]})
    shipping = await services.client.call(s.ORDERS_SHIP, {"order_id": order["order_id"], "wait_ms": 0})
    assert shipping["status"] == "SHIPPING"
    await past_deadline_and_retry_cap(quick)

    late = await invariant_4(services, quick)
    assert late["violations"] == 1 and order["order_id"] in late["offending"][0], late
    assert "SHIPPING" in late["offending"][0]

    await services.client.request("chaos.inventory.clear", {})
    await services.client.request("chaos.payment.clear", {})

    async def turned_back() -> bool:
        got = await services.client.call(s.ORDERS_GET, {"order_id": order["order_id"]})
        return got["status"] == "CONFIRMED" and got["ship_failure"] is not None

    await wait_for(turned_back, what="the shipment to turn back")
    await audit_clean(services)


async def test_a_service_without_events_rebuilds_an_empty_database(services):
    await services.stop(PAYMENT)
    services.lose_database(PAYMENT)

    stats = await rebuild(services.settings, PAYMENT, services.js)

    assert (stats.applied, stats.total, stats.last_seq) == (0, 0, 0)
    await services.start(PAYMENT)
    assert (await payment_view(services))["payments"] == []


async def test_a_failed_rebuild_leaves_the_database_as_it_was(settings, services):
    await services.stop(INVENTORY)
    path = settings.db_path(INVENTORY.name)
    before = tables(path)
    missing = settings.model_copy(update={"stream_name": "NO_SUCH_STREAM"})

    with pytest.raises(ReplayError, match="NO_SUCH_STREAM"):
        await rebuild(missing, INVENTORY, services.js)

    assert tables(path) == before and not path.with_name(path.name + ".rebuild").exists()


async def test_the_recover_flag_rebuilds_before_serving(settings, services):
    await some_history(services)
    before = await payment_view(services)
    await services.stop(PAYMENT)
    services.lose_database(PAYMENT)
    env = {"OMS_HOME": str(settings.home), "OMS_NATS_URL": settings.nats_url, "OMS_METRICS_PORT_PAYMENT": "0"}
    log = settings.home / "payment.log"
    proc = spawn(["-m", "payment_svc", "--recover"], env, log)
    try:

        async def serving() -> dict[str, Any] | None:
            assert proc.poll() is None, log.read_text()
            try:
                return await services.client.call(s.PAYMENT_LIST, {"limit": 1000}, timeout_s=1)
            except OmsError:
                return None

        assert await wait_for(serving, timeout=20, what="payment to serve after --recover") == before
    finally:
        assert terminate(proc) == 0, log.read_text()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A Python module as a process of its own, its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=os.environ | env, stdout=out, stderr=out, start_new_session=True
        )


def terminate(proc: subprocess.Popen[bytes]) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=10)


async def test_a_restock_repeated_after_a_rebuild_answers_as_before_instead_of_adding_again(services):
    body = {"sku": "KB-101", "qty": 7}
    first = await services.client.call(s.INVENTORY_RESTOCK, body, idempotency_key="restock-rebuilt-1")
    await services.stop(INVENTORY)
    services.lose_database(INVENTORY)
    await services.start(INVENTORY, recover=True)

    again = await services.client.call(s.INVENTORY_RESTOCK, body, idempotency_key="restock-rebuilt-1")
    assert again == first
    stock = await services.client.call(s.INVENTORY_STOCK, {"sku": "KB-101"})
    assert stock["products"][0]["on_hand"] == first["on_hand"]  # the units went in once
    with pytest.raises(Conflict):  # and the key still knows what it was used for
        await services.client.call(s.INVENTORY_RESTOCK, body | {"qty": 8}, idempotency_key="restock-rebuilt-1")
    await audit_clean(services)


async def test_a_rebuild_refuses_a_database_a_running_service_has_open_however_it_was_started(services):
    before = tables(services.settings.db_path(INVENTORY.name))
    # No pid file or home needed: the running service holds its database's lock.
    with pytest.raises(ReplayError, match=rf"open in a running inventory service \(pid {os.getpid()}\): stop it first"):
        await rebuild(services.settings, INVENTORY, services.js)
    assert tables(services.settings.db_path(INVENTORY.name)) == before
    await services.stop(INVENTORY)
    stats = await rebuild(services.settings, INVENTORY, services.js)  # stopped: it goes ahead
    assert stats.applied > 0
    await services.start(INVENTORY)
    await audit_clean(services)


async def test_a_rebuild_keeps_what_the_old_file_committed_and_never_published(services):
    from bus import contract as c
    from bus.db import Database
    from inventory_svc import store as inventory_store

    await services.stop(INVENTORY)
    path = services.settings.db_path(INVENTORY.name)
    # As a service killed between a commit and its publish leaves it: the change, its event in the outbox.
    async with Database(path, INVENTORY.name, INVENTORY.schema) as db:
        product, events = await db.commit(lambda tx: inventory_store.restock(tx, c.Restock(sku="KB-101", qty=11)))
        outbox = await db.read(lambda tx: [r[0] for r in tx.all("SELECT event_id FROM outbox")])
        assert events[0].event_id in outbox
    await rebuild(services.settings, INVENTORY, services.js)
    await services.start(INVENTORY)
    stock = await services.client.call(s.INVENTORY_STOCK, {"sku": "KB-101"})
    assert stock["products"][0]["on_hand"] == product.on_hand  # the restock survived the rebuild
    await audit_clean(services)


async def test_a_rebuild_after_a_long_outage_publishes_only_the_old_outbox_the_stream_lacks(services):
    from bus import contract as c
    from bus.db import Database
    from bus.stream import ensure_stream
    from inventory_svc import store as inventory_store

    settings = services.settings
    await ensure_stream(services.nc, services.js, settings.model_copy(update={"stream_duplicate_window_s": 1}))
    await services.stop(INVENTORY)
    path = settings.db_path(INVENTORY.name)
    # As a service killed with two restocks in its outbox leaves it: the first acknowledged (not yet
    # deleted), the second never sent.
    async with Database(path, INVENTORY.name, INVENTORY.schema) as db:
        for qty in (11, 13):
            await db.commit(lambda tx, qty=qty: inventory_store.restock(tx, c.Restock(sku="KB-101", qty=qty)))
        acked, unsent = (await db.unsent_events())[-2:]
    await services.js.publish(
        acked.subject, acked.body, stream=settings.stream_name, headers={"Nats-Msg-Id": acked.event_id}
    )
    await outlast_duplicate_window(services.js, settings.stream_name)

    await rebuild(settings, INVENTORY, services.js)

    held = [e["event_id"] for e in await stream_events(services.nc, settings)]
    assert held.count(acked.event_id) == 1 and held.count(unsent.event_id) == 1
    await services.start(INVENTORY)
    stock = await services.client.call(s.INVENTORY_STOCK, {"sku": "KB-101"})
    assert stock["products"][0]["on_hand"] == json.loads(unsent.body)["data"]["on_hand"]  # both restocks kept
    await audit_clean(services)


async def test_the_orders_rows_and_their_returns_are_rebuilt_byte_for_byte(services):
    """After a history with shipments and returns (and their failures' kin: a cancel, a decline), the order
    service's own tables come back from the stream exactly: every column of every order and return."""
    await some_history(services)
    path = services.settings.db_path("orders")
    before = tables(path)
    assert before["order_returns"] and any(row for row in before["orders"] if "RETURNED" in row)
    await services.stop(ORDERS)
    services.lose_database(ORDERS)
    await rebuild(services.settings, ORDERS, services.js)
    after = tables(path)
    for name in ("orders", "order_returns"):
        assert after[name] == before[name], name
