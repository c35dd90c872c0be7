"""The saga engine as a script, without a broker: expect command X, answer Y, expect the outcome."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import nats
import pytest

from bus import contract as c
from bus.db import Database
from bus.errors import BreakerOpen, OmsError, OutOfStock, PaymentDeclined, RequestTimeout, Unavailable
from bus.ids import new_id
from bus.saga import Saga, SagaEngine
from bus.settings import SagaSettings
from order_svc import store
from order_svc.saga import PLACE_ORDER
from order_svc.service import SPEC as ORDERS_SPEC
from tests.conftest import wait_for

FAST = SagaSettings(
    step_timeout_ms=50, deadline_ms=5000, retry_initial_ms=1, retry_max_interval_ms=5, retry_max_attempts=4
)

Script = Callable[[str, dict[str, Any], str], Any]


class Participants:
    """Scripted inventory and payment: records every request, answers as the script says."""

    def __init__(self, script: Script | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.script = script or (lambda subject, body, key: None)

    async def send(self, route, payload, *, timeout_s: float, idempotency_key: str) -> dict[str, Any]:
        body = payload if isinstance(payload, dict) else payload.model_dump(mode="json")
        self.calls.append((route.subject, idempotency_key))
        answer = self.script(route.subject, body, idempotency_key)
        if isinstance(answer, OmsError):
            raise answer
        if answer is not None:
            return answer
        if route.subject == "inventory.reserve":
            items = [{**line, "unit_price_cents": 1000} for line in body["items"]]
            total = sum(line["qty"] * 1000 for line in body["items"])
            return {
                "order_id": body["order_id"],
                "status": "ACTIVE",
                "items": items,
                "total_cents": total,
                "currency": "USD",
                "created_at": "now",
            }
        if route.subject == "payment.authorize":
            return {
                "order_id": body["order_id"],
                "status": "AUTHORIZED",
                "amount_cents": body["amount_cents"],
                "currency": body["currency"],
            }
        return {"order_id": body["order_id"], "status": "OK"}

    def subjects(self) -> list[str]:
        return [subject for subject, _ in self.calls]


async def place(db: Database, engine: SagaEngine, order_id: str = "ord_1", method: str = "card") -> str:
    cmd = c.PlaceOrder(customer_id="c1", items=[c.Line(sku="KB-101", qty=2)], payment_method=method)
    saga_id = f"saga_{order_id}"
    data = {
        "order_id": order_id,
        "customer_id": "c1",
        "items": [{"sku": "KB-101", "qty": 2}],
        "payment_method": method,
    }

    def unit(tx):
        store.create(tx, order_id, saga_id, cmd)
        return engine.create(tx, saga_id, order_id, data)

    run = await db.write(unit)
    engine.start(run)
    assert await engine.wait(saga_id, 10)
    return saga_id


async def order_status(db: Database, order_id: str = "ord_1") -> tuple[str, str | None]:
    row = await db.read(lambda tx: store.get(tx, order_id))
    return row["status"], row["failure_reason"]


@pytest.fixture
async def db(tmp_path):
    async with Database(tmp_path / "orders.db", "orders", ORDERS_SPEC.migrations) as database:
        yield database


async def test_happy_path_reserves_authorizes_and_confirms(db):
    p = Participants()
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    assert p.subjects() == ["inventory.reserve", "payment.authorize"]
    assert p.calls[0][1] == "saga_ord_1:reserve_stock:invoke"
    assert await order_status(db) == ("CONFIRMED", None)
    row = await db.read(lambda tx: store.get(tx, "ord_1"))
    assert row["total_cents"] == 2000


async def test_a_reservation_of_other_quantities_than_asked_is_undone_and_nothing_is_charged(db):
    def short(subject, body, key):  # a faulty inventory that reserves one unit fewer than asked
        if subject != "inventory.reserve":
            return None
        items = [{**line, "qty": line["qty"] - 1, "unit_price_cents": 1000} for line in body["items"]]
        return {
            "order_id": body["order_id"],
            "status": "ACTIVE",
            "items": items,
            "total_cents": 1000,
            "currency": "USD",
            "created_at": "now",
        }

    p = Participants(short)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    # Confirmed, it would have sold two while one is held: the reservation is released, nothing charged.
    assert p.subjects() == ["inventory.reserve", "inventory.release"]
    assert await order_status(db) == ("FAILED", "CONFLICT")
    row = await db.read(lambda tx: store.get(tx, "ord_1"))
    assert store.to_order(row).items == [c.PricedLine(sku="KB-101", qty=2)]  # the order keeps what was asked


async def test_an_authorization_of_another_amount_than_the_total_is_refunded(db):
    def overcharge(subject, body, key):
        if subject != "payment.authorize":
            return None
        return {"order_id": body["order_id"], "status": "AUTHORIZED", "amount_cents": 2001, "currency": "USD"}

    p = Participants(overcharge)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    assert p.subjects() == ["inventory.reserve", "payment.authorize", "payment.refund", "inventory.release"]
    assert await order_status(db) == ("FAILED", "CONFLICT")
    saga = await db.read(lambda tx: engine.view(tx, "saga_ord_1"))
    authorize = next(r for r in saga.steps if (r.step, r.action) == ("authorize_payment", "invoke"))
    assert authorize.status == "FAILED" and "2001" in authorize.last_error["message"]


async def test_out_of_stock_fails_without_compensating_anything(db):
    p = Participants(lambda s, b, k: OutOfStock("none left") if s == "inventory.reserve" else None)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    assert p.subjects() == ["inventory.reserve"]
    assert await order_status(db) == ("FAILED", "OUT_OF_STOCK")


async def test_declined_payment_releases_the_reservation(db):
    p = Participants(lambda s, b, k: PaymentDeclined("no") if s == "payment.authorize" else None)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    assert p.subjects() == ["inventory.reserve", "payment.authorize", "inventory.release"]
    assert p.calls[-1][1] == "saga_ord_1:reserve_stock:compensate"
    assert await order_status(db) == ("FAILED", "PAYMENT_DECLINED")


async def test_a_timeout_is_retried_with_the_same_key(db):
    answers = iter([RequestTimeout("lost"), None])
    p = Participants(lambda s, b, k: next(answers) if s == "payment.authorize" else None)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    keys = [k for s, k in p.calls if s == "payment.authorize"]
    assert keys == ["saga_ord_1:authorize_payment:invoke"] * 2
    assert await order_status(db) == ("CONFIRMED", None)


async def test_a_step_that_keeps_timing_out_is_compensated_too(db):
    p = Participants(lambda s, b, k: RequestTimeout("lost") if s == "payment.authorize" else None)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    assert p.subjects().count("payment.authorize") == FAST.retry_max_attempts
    # the timed-out authorize may have happened: it is refunded before the reservation is released
    assert p.subjects()[-2:] == ["payment.refund", "inventory.release"]
    assert await order_status(db) == ("FAILED", "RETRIES_EXHAUSTED")


async def test_compensation_is_retried_until_it_succeeds(db):
    failures = iter([Unavailable("down")] * 6)

    def script(s, b, k):
        if s == "payment.authorize":
            return PaymentDeclined("no")
        if s == "inventory.release":
            return next(failures, None)
        return None

    p = Participants(script)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    assert p.subjects().count("inventory.release") == 7
    assert await order_status(db) == ("FAILED", "PAYMENT_DECLINED")


async def test_breaker_rejections_are_not_attempts(db):
    answers = iter([BreakerOpen("open", {"retry_in_s": 0.001})] * 10 + [None])
    p = Participants(lambda s, b, k: next(answers) if s == "payment.authorize" else None)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine)
    assert await order_status(db) == ("CONFIRMED", None)


async def test_past_the_deadline_completed_steps_are_compensated(db):
    gate = asyncio.Event()
    now = [1000.0]

    def script(s, b, k):
        if s == "payment.authorize":
            now[0] += 100  # the clock jumps past the deadline while the step is failing
            return Unavailable("slow")
        return None

    p = Participants(script)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST, clock=lambda: now[0])
    await place(db, engine)
    gate.set()
    assert await order_status(db) == ("FAILED", "DEADLINE_EXCEEDED")
    assert p.subjects()[-1] == "inventory.release"


async def test_a_restarted_engine_resumes_where_the_saga_stopped(db):
    hold = asyncio.Event()

    async def stalled_send(route, payload, **kw):
        if route.subject == "payment.authorize":
            await hold.wait()
        return await Participants().send(route, payload, **kw)

    engine = SagaEngine(db, PLACE_ORDER, stalled_send, FAST)
    cmd = c.PlaceOrder(customer_id="c1", items=[c.Line(sku="KB-101", qty=1)])
    data = {
        "order_id": "ord_r",
        "customer_id": "c1",
        "items": [{"sku": "KB-101", "qty": 1}],
        "payment_method": "card",
    }

    def unit(tx):
        store.create(tx, "ord_r", "saga_r", cmd)
        return engine.create(tx, "saga_r", "ord_r", data)

    engine.start(await db.write(unit))
    assert not await engine.wait("saga_r", 0.2)
    await engine.stop()  # the process "dies" mid-step
    p = Participants()
    fresh = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    assert await fresh.resume_all() == 1
    assert await fresh.wait("saga_r", 5)
    assert p.subjects() == ["payment.authorize"]  # reserve is not repeated; authorize is re-sent
    assert p.calls[0][1] == "saga_r:authorize_payment:invoke"
    assert await order_status(db, "ord_r") == ("CONFIRMED", None)


async def test_cancelling_a_confirmed_order_refunds_and_releases(db):
    p = Participants()
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    saga_id = await place(db, engine)
    await db.write(lambda tx: store.request_cancel(tx, c.CancelOrder(order_id="ord_1")))
    await engine.stop_forward(saga_id, "CANCELLED")
    assert await engine.wait(saga_id, 5)
    assert p.subjects()[-2:] == ["payment.refund", "inventory.release"]
    assert await order_status(db) == ("CANCELLED", None)


async def test_a_business_answer_after_an_attempt_lost_in_a_crash_still_compensates(db):
    hold = asyncio.Event()

    async def stalled_send(route, payload, **kw):
        await hold.wait()  # the reserve was sent; the service dies before any answer
        raise AssertionError("never answered")

    engine = SagaEngine(db, PLACE_ORDER, stalled_send, FAST)
    cmd = c.PlaceOrder(customer_id="c1", items=[c.Line(sku="KB-101", qty=1)])
    data = {"order_id": "ord_x", "customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}], "payment_method": "card"}

    def unit(tx):
        store.create(tx, "ord_x", "saga_x", cmd)
        return engine.create(tx, "saga_x", "ord_x", data)

    engine.start(await db.write(unit))
    assert not await engine.wait("saga_x", 0.1)
    await engine.stop()
    p = Participants(lambda s, b, k: OutOfStock("none left") if s == "inventory.reserve" else None)
    fresh = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await fresh.resume_all()
    assert await fresh.wait("saga_x", 5)
    # the first reserve may have taken effect before the crash: it is released all the same
    assert p.subjects() == ["inventory.reserve", "inventory.release"]
    assert await order_status(db, "ord_x") == ("FAILED", "OUT_OF_STOCK")


async def test_an_order_database_from_before_the_step_upgrades_keeps_its_step_records(tmp_path):
    from bus.saga import SAGA_MIGRATIONS

    path = tmp_path / "orders.db"
    before = (*SAGA_MIGRATIONS, *store.MIGRATIONS)
    assert ORDERS_SPEC.migrations[: len(before)] == before  # only appended to: versions are positions
    async with Database(path, "orders", before) as db:
        await db.write(
            lambda tx: tx.execute(
                "INSERT INTO saga_steps (saga_id, step, action, status, attempts, uncertain, started_at)"
                " VALUES ('saga_1', 'reserve_stock', 'invoke', 'RUNNING', 2, 1, 5.0)"
            )
        )
        await db.write(
            lambda tx: tx.execute(
                "INSERT INTO sagas (saga_id, name, ref, status, data, deadline_at, created_at, updated_at)"
                " VALUES ('saga_1', 'place_order', 'ord_1', 'RUNNING', '{}', 9e9, 5.0, 5.0)"
            )
        )
    async with Database(path, "orders", ORDERS_SPEC.migrations) as db:
        engine = SagaEngine(db, PLACE_ORDER, Participants().send, FAST)
        saga = await db.read(lambda tx: engine.view(tx, "saga_1"))
        left = await db.read(lambda tx: tx.one("SELECT count(*) FROM saga_steps")[0])
        stored = await db.read(lambda tx: json.loads(tx.one("SELECT steps FROM sagas")[0]))
        indexes = await db.read(lambda tx: {r[0] for r in tx.all("SELECT name FROM sqlite_master WHERE type='index'")})
    # The record moved into its saga's row, as it was.
    assert [(r.step, r.action, r.status, r.attempts, r.uncertain) for r in saga.steps] == [
        ("reserve_stock", "invoke", "RUNNING", 2, True)
    ]
    assert saga.steps[0].started_at is not None and left == 0
    assert stored[0]["uncertain"] is True  # as the engine writes it, not SQLite's 1
    assert "sagas_ref" not in indexes


async def test_saga_listings_walk_an_index_newest_first_instead_of_sorting_every_saga(db):
    engine = SagaEngine(db, PLACE_ORDER, Participants().send, FAST)
    # Made one millisecond apart, in creation order: ids begin with their time, as `new_id` makes them.
    start = int(new_id("saga")[5:17], 16)
    ids = [f"saga_{start + n:012x}{random.getrandbits(48):012x}" for n in range(300)]
    order = list(range(300))
    random.shuffle(order)  # inserted out of order: only the ids tell which is newest

    def insert(tx):
        for n in order:
            run = engine.create(tx, ids[n], f"ord_{n}", {"order_id": f"ord_{n}"})
            if n % 3:
                tx.execute("UPDATE sagas SET status = 'COMPLETED' WHERE saga_id = ?", (run.saga_id,))

    await db.write(insert)
    newest = await db.read(lambda tx: [v.saga_id for v in engine.list(tx, None, False, 5)])
    completed = await db.read(lambda tx: [v.saga_id for v in engine.list(tx, "COMPLETED", False, 5)])
    assert newest == ids[::-1][:5]  # the last five made, newest first
    assert completed == [saga_id for n, saga_id in reversed(list(enumerate(ids))) if n % 3][:5]

    def plans(tx):
        statements: list[str] = []
        tx._conn.set_trace_callback(statements.append)
        try:
            engine.list(tx, None, False, 5)
            engine.list(tx, "COMPLETED", False, 5)
        finally:
            tx._conn.set_trace_callback(None)
        listings = [sql for sql in statements if sql.startswith("SELECT * FROM sagas")]
        return [" / ".join(row[3] for row in tx.all("EXPLAIN QUERY PLAN " + sql)) for sql in listings]

    found = await db.read(plans)
    assert len(found) == 2
    assert all("INDEX" in plan and "TEMP B-TREE" not in plan for plan in found), found


async def test_a_resumed_saga_sends_nothing_before_the_outbox_it_found_is_in_the_stream(settings, tmp_path):
    from bus.outbox import Relay
    from bus.stream import ensure_stream

    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    cmd = c.PlaceOrder(customer_id="c1", items=[c.Line(sku="KB-101", qty=2)])
    data = {"order_id": "ord_r", "customer_id": "c1", "items": [{"sku": "KB-101", "qty": 2}], "payment_method": "card"}
    async with Database(tmp_path / "orders.db", "orders", ORDERS_SPEC.migrations) as db:
        p = Participants()
        engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)

        def created(tx):  # committed just before a crash: the order's creation event never left the outbox
            store.create(tx, "ord_r", "saga_r", cmd)
            engine.create(tx, "saga_r", "ord_r", data)

        await db.commit(created)
        relay = Relay(js, db, settings.stream_name)  # and the stream is not there yet
        await relay.start()
        try:
            assert await engine.resume_all() == 1
            await wait_for(lambda: relay.failures >= 1, what="the creation's publish to be refused")
            assert p.calls == []
            await ensure_stream(nc, js, settings)
            assert await engine.wait("saga_r", 10)
            assert p.subjects() == ["inventory.reserve", "payment.authorize"]
        finally:
            await engine.stop()
            await relay.stop()
    await nc.close()


async def test_an_abort_is_an_event_and_a_rebuild_turns_the_saga_back_as_well(db, tmp_path):
    from bus import jsonb
    from order_svc import replay

    paying = asyncio.Event()
    release = asyncio.Event()

    async def script_authorize_waits(route, payload, *, timeout_s: float, idempotency_key: str):
        if route.subject == "payment.authorize":
            paying.set()
            await release.wait()
        return await Participants().send(route, payload, timeout_s=timeout_s, idempotency_key=idempotency_key)

    engine = SagaEngine(db, PLACE_ORDER, script_authorize_waits, FAST)
    placing = asyncio.create_task(place(db, engine, "ord_a"))
    await asyncio.wait_for(paying.wait(), 10)
    # turns back at the step's end
    assert await engine.stop_forward("saga_ord_a", "ABORTED", note="payment provider incident") == "RUNNING"
    release.set()
    await placing
    assert await order_status(db, "ord_a") == ("FAILED", "ABORTED")
    events = await db.read(lambda tx: [jsonb.loads(r["body"]) for r in tx.all("SELECT body FROM outbox ORDER BY seq")])
    types = [e["type"] for e in events]
    assert "abort_requested" in types and types.index("abort_requested") < types.index("order_compensating")
    abort = events[types.index("abort_requested")]["data"]
    assert abort == {"reason": "ABORTED", "note": "payment provider incident"}  # the operator's words are kept

    # A rebuild that saw the abort but not yet the turn back (the database lost in between) turns back too.
    async with Database(tmp_path / "rebuilt.db", "orders", ORDERS_SPEC.migrations) as rebuilt:
        upto = types.index("abort_requested") + 1

        def project(tx):
            for body in events[:upto]:
                replay.apply(tx, c.Event.model_validate(body))

        await rebuilt.write(project)
        saga = "SELECT status, stop_reason FROM sagas WHERE saga_id = 'saga_ord_a'"
        row = await rebuilt.read(lambda tx: tx.one(saga))
        assert (row["status"], row["stop_reason"]) == ("RUNNING", "ABORTED")


async def test_a_saga_whose_driver_fails_unexpectedly_starts_again_from_its_records(db):
    failures = []

    def script(subject: str, body: dict[str, Any], key: str) -> Any:
        if subject == "inventory.reserve" and not failures:
            failures.append(key)
            raise RuntimeError("a bug, or a database error, in the middle of a step")
        return None

    p = Participants(script)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    await place(db, engine, "ord_d")  # returns when the first driver gave up
    await wait_for(lambda: order_status(db, "ord_d"), what="the order to be readable")

    async def confirmed() -> bool:
        return (await order_status(db, "ord_d"))[0] == "CONFIRMED"

    await wait_for(confirmed, what="the saga to be driven again and finish")
    # The failed attempt may have reached the participant: the step was sent again with the same key.
    assert p.subjects() == ["inventory.reserve", "inventory.reserve", "payment.authorize"]
    assert failures == [p.calls[1][1]]
    saga = await db.read(lambda tx: engine.view(tx, "saga_ord_d"))
    reserve = next(r for r in saga.steps if (r.step, r.action) == ("reserve_stock", "invoke"))
    assert (reserve.attempts, reserve.uncertain) == (2, True)
    await engine.stop()


async def test_a_cancel_that_meets_a_failed_driver_goes_on_from_the_records_not_from_the_failed_run(db):
    class FailingOnce:
        """The order's hooks, but turning back fails once, after the engine changed the run in memory."""

        failures = 1

        def on_stop_requested(self, *args: Any) -> None:
            PLACE_ORDER.hooks.on_stop_requested(*args)

        def on_finished(self, *args: Any) -> None:
            PLACE_ORDER.hooks.on_finished(*args)

        def on_compensating(self, *args: Any) -> None:
            PLACE_ORDER.hooks.on_compensating(*args)
            if self.failures:
                self.failures -= 1
                raise RuntimeError("a bug, or a database error, while turning back")

    cancels: list[asyncio.Task[str]] = []

    def script(subject: str, body: dict[str, Any], key: str) -> Any:
        if subject == "payment.authorize":  # a cancel arrives as the decline does: one batch holds both units
            cancels.append(asyncio.create_task(engine.stop_forward("saga_ord_1", "CANCELLED")))
            return PaymentDeclined("no")
        return None

    p = Participants(script)
    saga = Saga(PLACE_ORDER.name, *PLACE_ORDER.steps, hooks=FailingOnce())
    engine = SagaEngine(db, saga, p.send, FAST, rng=random.Random(1))
    await place(db, engine)  # returns when the failed driver gave up
    await cancels[0]

    async def ended() -> bool:
        return (await order_status(db))[0] == "CANCELLED"

    await wait_for(ended, what="the saga to go on from its records and end")
    # Both the cancel and the failed driver's restart go on from the records: whichever reads them first
    # drives the saga, the other finds it taken. Judge once nothing is left to run, not at the first sight
    # of CANCELLED: a second driver would only show after it.
    await wait_for(lambda: not engine._tasks, what="the engine to have nothing left to drive")
    # The failed unit was rolled back, so the records say the authorize is still in doubt, and the cancel
    # stands: refund, then release. The run in memory, ahead of them, would have skipped the refund and the
    # order's turn back (its event included).
    assert p.subjects() == ["inventory.reserve", "payment.authorize", "payment.refund", "inventory.release"]
    kinds = await db.read(lambda tx: [r[0].split(".")[2] for r in tx.all("SELECT subject FROM outbox ORDER BY seq")])
    assert kinds == ["order_created", "order_compensating", "step_compensated", "step_compensated", "order_cancelled"]
    await engine.stop()


class SlowToHearBack(Database):
    """An orders database whose next read, once armed, answers only when `release` is set: a read that comes
    back late while the rest of the service moves on (its thread busy, the machine loaded)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.armed = False
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()

    async def read(self, fn: Callable[[Any], Any]) -> Any:
        value = await super().read(fn)
        if self.armed:
            self.armed = False
            self.read_done.set()
            await self.release.wait()
        return value


async def test_a_saga_read_from_its_records_while_a_cancel_drives_it_is_not_driven_again_from_that_read(tmp_path):
    failed: list[str] = []
    async with SlowToHearBack(tmp_path / "orders.db", "orders", ORDERS_SPEC.migrations) as db:

        def script(subject: str, body: dict[str, Any], key: str) -> Any:
            if subject == "payment.authorize" and not failed:
                failed.append(key)
                db.armed = True  # the failed driver's restart reads the saga's row: that read comes back late
                raise RuntimeError("a bug, or a database error, in the middle of a step")
            return None

        p = Participants(script)
        engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
        await place(db, engine)  # returns when the failed driver gave up
        await asyncio.wait_for(db.read_done.wait(), 10)  # the restart has read the saga: RUNNING, no stop
        await engine.stop_forward("saga_ord_1", "CANCELLED")  # a cancel commits meanwhile
        await wait_for(lambda: engine.in_flight == 0, what="whatever drove the saga since to have ended")
        db.release.set()  # the restart hears back, with the row from before the cancel
        await wait_for(lambda: not engine._tasks, what="the engine to have nothing left to drive")
        # One driver went on from the records as they are after the cancel: the authorize in doubt is refunded,
        # the stock released, the order cancelled once. Driven again from the early read, the saga would send
        # the authorize again and confirm the cancelled order (or, read a moment later, cancel it twice).
        assert p.subjects() == ["inventory.reserve", "payment.authorize", "payment.refund", "inventory.release"]
        assert await order_status(db) == ("CANCELLED", None)
        kinds = await db.read(lambda tx: [r[0].split(".")[2] for r in tx.all("SELECT subject FROM outbox")])
        assert kinds.count("order_cancelled") == 1 and "order_confirmed" not in kinds, kinds
        await engine.stop()


@pytest.mark.parametrize("refused", ["inventory.reserve", "payment.authorize"])
async def test_a_step_refused_by_the_check_is_still_undone_after_the_order_database_is_rebuilt(db, tmp_path, refused):
    from bus import jsonb
    from bus.settings import Settings
    from order_svc import replay

    undo = {"inventory.reserve": "inventory.release", "payment.authorize": "payment.refund"}[refused]
    reachable = asyncio.Event()  # compensations fail until the database is lost and rebuilt

    def script(subject: str, body: dict[str, Any], key: str) -> Any:
        if subject == refused == "inventory.reserve":  # one unit fewer than asked
            items = [{**line, "qty": line["qty"] - 1, "unit_price_cents": 1000} for line in body["items"]]
            return {
                "order_id": body["order_id"],
                "status": "ACTIVE",
                "items": items,
                "total_cents": 1000,
                "currency": "USD",
            }
        if subject == refused == "payment.authorize":
            return {"order_id": body["order_id"], "status": "AUTHORIZED", "amount_cents": 1, "currency": "USD"}
        if subject in ("inventory.release", "payment.refund") and not reachable.is_set():
            return Unavailable("down")
        return None

    before = Participants(script)
    engine = SagaEngine(db, PLACE_ORDER, before.send, FAST)
    cmd = c.PlaceOrder(customer_id="c1", items=[c.Line(sku="KB-101", qty=2)])
    data = {"order_id": "ord_1", "customer_id": "c1", "items": [{"sku": "KB-101", "qty": 2}], "payment_method": "card"}

    def create(tx):
        store.create(tx, "ord_1", "saga_ord_1", cmd)
        return engine.create(tx, "saga_ord_1", "ord_1", data)

    engine.start(await db.write(create))
    await wait_for(lambda: undo in before.subjects(), what="the refused step's compensation to be tried")
    await engine.stop()
    events = await db.read(lambda tx: [jsonb.loads(r["body"]) for r in tx.all("SELECT body FROM outbox ORDER BY seq")])

    # The order database is lost; what its events tell is all that is left.
    async with Database(tmp_path / "rebuilt.db", "orders", ORDERS_SPEC.migrations) as rebuilt:

        def project(tx):
            for body in events:
                replay.apply(tx, c.Event.model_validate(body))
            replay.settle(tx, Settings())

        await rebuilt.write(project)
        reachable.set()
        after = Participants(script)
        resumed = SagaEngine(rebuilt, PLACE_ORDER, after.send, FAST)
        await resumed.resume_all()
        assert await resumed.wait("saga_ord_1", 10)
        status = await rebuilt.read(lambda tx: tuple(tx.one("SELECT status, failure_reason FROM orders")))
        await resumed.stop()
    # What the participant did on the refused request is undone, rebuilt or not.
    assert undo in after.subjects() and status == ("FAILED", "CONFLICT")


# -- cancels and aborts against a saga in flight (through the order service's handlers) ----------------------


def _create(engine: SagaEngine, order_id: str) -> Callable[[Any], Any]:
    from order_svc.service import saga_of

    cmd = c.PlaceOrder(customer_id="c1", items=[c.Line(sku="KB-101", qty=1)])
    data = {"order_id": order_id, "customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}], "payment_method": "card"}

    def unit(tx):  # the saga's id follows from the order's, as in the order service
        store.create(tx, order_id, saga_of(order_id), cmd)
        return engine.create(tx, saga_of(order_id), order_id, data)

    return unit


def _held_at_authorize(gate: asyncio.Event, reached: asyncio.Event) -> Callable[..., Any]:
    async def send(route, payload, **kw):
        if route.subject == "payment.authorize":
            reached.set()
            await gate.wait()
        return await Participants().send(route, payload, **kw)

    return send


async def _held_saga(db: Database, order_id: str) -> tuple[SagaEngine, asyncio.Event]:
    """A saga started and held at its authorize request until the returned gate opens."""
    gate, reached = asyncio.Event(), asyncio.Event()
    engine = SagaEngine(db, PLACE_ORDER, _held_at_authorize(gate, reached), FAST)
    engine.start(await db.write(_create(engine, order_id)))
    await asyncio.wait_for(reached.wait(), 10)
    return engine, gate


def _stop_noted(db: Database, saga_id: str, reason: str) -> Callable[[], Any]:
    """A condition for `wait_for`: the saga's stop is committed with this reason."""

    async def noted() -> bool:
        row = await db.read(lambda tx: tx.one("SELECT stop_reason FROM sagas WHERE saga_id = ?", (saga_id,)))
        return row["stop_reason"] == reason

    return noted


def _orders(db: Database, engine: SagaEngine) -> Any:
    from types import SimpleNamespace

    from order_svc.service import Orders

    return Orders(SimpleNamespace(db=db), engine)  # type: ignore[arg-type]  # its handlers use the database only


def _call(route: Any) -> Any:
    from bus.service import Call

    return Call(route)


async def test_a_cancel_accepted_just_before_a_crash_still_turns_the_saga_back(db):
    from bus import subjects as s

    engine, _ = await _held_saga(db, "ord_c")

    class Died(Exception):
        pass

    async def dies(*args: Any) -> str:  # the process dies as soon as the cancel has committed
        await engine.stop()
        raise Died

    engine.stopped = dies  # type: ignore[method-assign]
    with pytest.raises(Died):
        await _orders(db, engine).cancel(c.CancelOrder(order_id="ord_c", reason="changed mind"), _call(s.ORDERS_CANCEL))
    p = Participants()
    fresh = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    assert await fresh.resume_all() == 1
    assert await fresh.wait("saga_c", 10)
    # The cancel and the saga's stop were one unit of work: the restarted saga turns back instead of confirming.
    assert await order_status(db, "ord_c") == ("CANCELLED", None)
    assert p.subjects() == ["payment.refund", "inventory.release"]  # the authorize may have happened: undone too


async def test_an_abort_that_finds_the_saga_completed_leaves_the_confirmed_order_alone(db):
    from bus import subjects as s
    from bus.errors import Conflict

    engine = SagaEngine(db, PLACE_ORDER, Participants().send, FAST)
    engine.start(await db.write(_create(engine, "ord_a")))
    assert await engine.wait("saga_a", 10)
    assert await order_status(db, "ord_a") == ("CONFIRMED", None)
    # Only a cancel reopens a completed saga: a stop that may not reopen leaves it as it is ...
    assert await engine.stop_forward("saga_a", "ABORTED", reopen=False) == "COMPLETED"
    # ... and the abort checks and stops in one unit of work, so a saga completing meanwhile is refused.
    with pytest.raises(Conflict, match="is COMPLETED; only a running saga can be aborted"):
        await _orders(db, engine).saga_abort(c.SagaAbort(saga_id="saga_a"), _call(s.SAGA_ABORT))
    assert await order_status(db, "ord_a") == ("CONFIRMED", None)


async def test_an_abort_repeated_with_its_key_answers_without_acting_again(db):
    from bus import subjects as s
    from bus.idempotency import request_hash
    from bus.service import Call

    engine, gate = await _held_saga(db, "ord_k")
    orders = _orders(db, engine)
    abort = c.SagaAbort(saga_id="saga_k", reason="incident")
    first = asyncio.create_task(orders.saga_abort(abort, Call(s.SAGA_ABORT, "abort-1")))
    await wait_for(_stop_noted(db, "saga_k", "ABORTED"), what="the abort to be noted")
    gate.set()
    assert (await first).status == "FAILED"
    # The same key again: the stored answer, then the saga as it is now; not "only a running saga can be aborted".
    again = await orders.saga_abort(abort, Call(s.SAGA_ABORT, "abort-1"))
    assert (again.status, again.failure_reason) == ("FAILED", "ABORTED")
    stored = await db.read(lambda tx: tx.one("SELECT request_hash FROM idempotency WHERE key = 'abort-1'"))
    assert stored["request_hash"] == request_hash(abort)


async def test_the_first_stop_asked_for_wins_a_cancel_then_an_abort_ends_cancelled(db):
    from bus import subjects as s

    engine, gate = await _held_saga(db, "ord_b")
    orders = _orders(db, engine)
    cancel = asyncio.create_task(orders.cancel(c.CancelOrder(order_id="ord_b"), _call(s.ORDERS_CANCEL)))
    await wait_for(_stop_noted(db, "saga_b", "CANCELLED"), what="the cancel to be noted")
    stopped, asked = engine.stopped, asyncio.Event()

    async def abort_asked(*args: Any) -> str:  # the abort's unit of work has committed
        try:
            return await stopped(*args)
        finally:
            asked.set()

    engine.stopped = abort_asked  # type: ignore[method-assign]
    abort = asyncio.create_task(orders.saga_abort(c.SagaAbort(saga_id="saga_b"), _call(s.SAGA_ABORT)))
    await asyncio.wait_for(asked.wait(), 10)  # the abort is in before the saga moves on
    gate.set()
    assert (await cancel).status == c.OrderStatus.CANCELLED
    assert (await abort).status == "CANCELLED"
    assert await order_status(db, "ord_b") == ("CANCELLED", None)


async def test_a_cancel_asked_for_while_a_request_is_out_does_not_wait_out_the_backoff(db):
    from bus import subjects as s

    # A minute of backoff after a timeout: without the wake that came during the request, the saga sleeps it out.
    slow = SagaSettings(step_timeout_ms=50, deadline_ms=600_000, retry_initial_ms=60_000, retry_max_interval_ms=60_000)
    gate, reached = asyncio.Event(), asyncio.Event()

    async def send(route, payload, **kw):
        if route.subject == "payment.authorize" and not gate.is_set():
            reached.set()
            await gate.wait()
            raise RequestTimeout("no answer")
        return await Participants().send(route, payload, **kw)

    class Longest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    engine = SagaEngine(db, PLACE_ORDER, send, slow, rng=Longest())
    engine.start(await db.write(_create(engine, "ord_w")))
    await asyncio.wait_for(reached.wait(), 10)
    cancel = asyncio.create_task(_orders(db, engine).cancel(c.CancelOrder(order_id="ord_w"), _call(s.ORDERS_CANCEL)))
    await wait_for(lambda: engine._runs["saga_w"].stop_reason == "CANCELLED", what="the cancel to be noted")
    gate.set()  # the authorize times out after the cancel arrived
    assert (await cancel).status == c.OrderStatus.CANCELLED  # within the cancel's own wait (10 s), not a minute


async def test_a_cancel_noted_before_the_placing_request_starts_its_saga_reaches_the_run_that_drives_it(db):
    from bus import subjects as s

    gate, reached = asyncio.Event(), asyncio.Event()
    engine = SagaEngine(db, PLACE_ORDER, _held_at_authorize(gate, reached), FAST)
    created = await db.write(_create(engine, "ord_p"))  # placed, not started yet (it waits for its event's ack)
    stopped = engine.stopped

    async def placing_starts_first(*args: Any) -> str:  # the placing request resumes between commit and wake
        engine.start(created)
        return await stopped(*args)

    engine.stopped = placing_starts_first  # type: ignore[method-assign]
    gate.set()
    order = await _orders(db, engine).cancel(c.CancelOrder(order_id="ord_p"), _call(s.ORDERS_CANCEL))
    assert order.status == c.OrderStatus.CANCELLED
    assert await order_status(db, "ord_p") == ("CANCELLED", None)


async def test_a_stop_that_arrives_while_an_attempt_is_recorded_is_honoured_before_that_attempt_is_sent(db):
    answers = iter([RequestTimeout("no answer")])
    p = Participants(lambda subject, body, key: next(answers, None) if subject == "payment.authorize" else None)
    engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
    record_start = engine._record_start

    def stop_arrives(tx: Any, run: Any, step: Any, action: str, attempt: int, **options: Any) -> None:
        record_start(tx, run, step, action, attempt, **options)
        if step.name == "authorize_payment" and attempt == 2:  # a cancel lands while the retry is being recorded
            run.stop_reason = "CANCELLED"
            run.wake.set()

    engine._record_start = stop_arrives  # type: ignore[method-assign]
    await place(db, engine)
    # The second attempt was recorded but never sent: the saga turned back, undoing what the first may have done.
    assert p.subjects() == ["inventory.reserve", "payment.authorize", "payment.refund", "inventory.release"]
    assert await order_status(db) == ("CANCELLED", None)


async def test_a_retry_repeated_with_its_key_after_the_saga_ended_answers_as_before(db):
    from bus import subjects as s
    from bus.errors import Conflict
    from bus.service import Call

    engine = SagaEngine(db, PLACE_ORDER, Participants().send, FAST)
    engine.start(await db.write(_create(engine, "ord_r")))
    assert await engine.wait("saga_r", 10)
    orders = _orders(db, engine)
    with pytest.raises(Conflict, match="is COMPLETED; only a running saga can be retried"):
        await orders.saga_retry(c.SagaRef(saga_id="saga_r"), Call(s.SAGA_RETRY, "retry-1"))
    # The refusal is the key's stored answer: the same again, not a new decision.
    stored = await db.read(lambda tx: tx.one("SELECT reply FROM idempotency WHERE key = 'retry-1'"))
    assert b"CONFLICT" in stored["reply"]
    with pytest.raises(Conflict, match="is COMPLETED"):
        await orders.saga_retry(c.SagaRef(saga_id="saga_r"), Call(s.SAGA_RETRY, "retry-1"))
