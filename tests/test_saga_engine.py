"""The saga engine as a script, without a broker: expect command X, answer Y, expect the outcome."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import nats

from bus import contract as c
from bus.db import Database
from bus.errors import BadReply, BreakerOpen, OutOfStock, PaymentDeclined, RequestTimeout, Unavailable
from bus.saga.definition import StepCall
from bus.saga.engine import SagaEngine
from order_svc import orders
from order_svc.saga import PLACE_ORDER
from order_svc.service import SPEC as ORDERS_SPEC
from tests.conftest import wait_for
from tests.sagas import FAST, Participants, authorization, order_status, place, placing, reservation


async def test_happy_path_reserves_authorizes_and_confirms(orders_db):
    p = Participants()
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    assert p.subjects() == ["inventory.reserve", "payment.authorize"]
    assert p.calls[0][1] == "saga_ord_1:reserve_stock:invoke"
    assert await order_status(orders_db) == ("CONFIRMED", None)
    row = await orders_db.read(lambda tx: orders.get(tx, "ord_1"))
    assert row["total_cents"] == 2000


async def test_a_reservation_of_other_quantities_than_asked_is_undone_and_nothing_is_charged(orders_db):
    def short(call: StepCall) -> Any:  # a faulty inventory that reserves one unit fewer than asked
        return reservation(call, fewer=1) if call.route.subject == "inventory.reserve" else None

    p = Participants(short)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    # Confirmed, it would have sold two while one is held: the reservation is released, nothing charged.
    assert p.subjects() == ["inventory.reserve", "inventory.release"]
    assert await order_status(orders_db) == ("FAILED", "CONFLICT")
    row = await orders_db.read(lambda tx: orders.get(tx, "ord_1"))
    assert orders.to_order(row).items == [c.PricedLine(sku="KB-101", qty=2)]  # the order keeps what was asked


async def test_an_authorization_of_another_amount_than_the_total_is_refunded(orders_db):
    def overcharge(call: StepCall) -> Any:
        return authorization(call, amount_cents=2001) if call.route.subject == "payment.authorize" else None

    p = Participants(overcharge)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    assert p.subjects() == ["inventory.reserve", "payment.authorize", "payment.refund", "inventory.release"]
    assert await order_status(orders_db) == ("FAILED", "CONFLICT")
    saga = await orders_db.read(lambda tx: engine.view(tx, "saga_ord_1"))
    authorize = next(r for r in saga.steps if (r.step, r.action) == ("authorize_payment", "invoke"))
    assert authorize.status == "FAILED" and "2001" in authorize.last_error["message"]


async def test_a_success_that_is_not_the_routes_reply_is_refused_and_undone(orders_db):
    p = Participants()

    async def send(call: StepCall) -> Any:
        if call.route.subject == "payment.authorize":  # as the client says of {"status": "AUTHORIZED"} alone
            raise BadReply("payment.authorize answered a result that does not fit Payment")
        return await p.send(call)

    engine = SagaEngine(orders_db, PLACE_ORDER, send, FAST)
    await place(orders_db, engine)
    assert await order_status(orders_db) == ("FAILED", "CONFLICT")
    # What the participant did on that request is undone, as for an answer its check refuses.
    saga = await orders_db.read(lambda tx: engine.view(tx, "saga_ord_1"))
    assert [(r.step, r.action, r.status) for r in saga.steps][-2:] == [
        ("authorize_payment", "compensate", "SUCCEEDED"),
        ("reserve_stock", "compensate", "SUCCEEDED"),
    ]


async def test_out_of_stock_fails_without_compensating_anything(orders_db):
    p = Participants(lambda call: OutOfStock("none left") if call.route.subject == "inventory.reserve" else None)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    assert p.subjects() == ["inventory.reserve"]
    assert await order_status(orders_db) == ("FAILED", "OUT_OF_STOCK")


async def test_declined_payment_releases_the_reservation(orders_db):
    p = Participants(lambda call: PaymentDeclined("no") if call.route.subject == "payment.authorize" else None)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    assert p.subjects() == ["inventory.reserve", "payment.authorize", "inventory.release"]
    assert p.calls[-1][1] == "saga_ord_1:reserve_stock:compensate"
    assert await order_status(orders_db) == ("FAILED", "PAYMENT_DECLINED")


async def test_a_timeout_is_retried_with_the_same_key(orders_db):
    answers = iter([RequestTimeout("lost"), None])
    p = Participants(lambda call: next(answers) if call.route.subject == "payment.authorize" else None)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    keys = [k for s, k in p.calls if s == "payment.authorize"]
    assert keys == ["saga_ord_1:authorize_payment:invoke"] * 2
    assert await order_status(orders_db) == ("CONFIRMED", None)


async def test_a_step_that_keeps_timing_out_is_compensated_too(orders_db):
    p = Participants(lambda call: RequestTimeout("lost") if call.route.subject == "payment.authorize" else None)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    assert p.subjects().count("payment.authorize") == FAST.retry_max_attempts
    # the timed-out authorize may have happened: it is refunded before the reservation is released
    assert p.subjects()[-2:] == ["payment.refund", "inventory.release"]
    assert await order_status(orders_db) == ("FAILED", "RETRIES_EXHAUSTED")


async def test_compensation_is_retried_until_it_succeeds(orders_db):
    failures = iter([Unavailable("down")] * 6)

    def script(call: StepCall) -> Any:
        if call.route.subject == "payment.authorize":
            return PaymentDeclined("no")
        if call.route.subject == "inventory.release":
            return next(failures, None)
        return None

    p = Participants(script)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    assert p.subjects().count("inventory.release") == 7
    assert await order_status(orders_db) == ("FAILED", "PAYMENT_DECLINED")


async def test_breaker_rejections_are_not_attempts(orders_db):
    answers = iter([BreakerOpen("open", {"retry_in_s": 0.001})] * 10 + [None])
    p = Participants(lambda call: next(answers) if call.route.subject == "payment.authorize" else None)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine)
    assert await order_status(orders_db) == ("CONFIRMED", None)


async def test_past_the_deadline_completed_steps_are_compensated(orders_db):
    now = [1000.0]

    def script(call: StepCall) -> Any:
        if call.route.subject == "payment.authorize":
            now[0] += 100  # the clock jumps past the deadline while the step is failing
            return Unavailable("slow")
        return None

    p = Participants(script)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST, clock=lambda: now[0])
    await place(orders_db, engine)
    assert await order_status(orders_db) == ("FAILED", "DEADLINE_EXCEEDED")
    assert p.subjects()[-1] == "inventory.release"


async def test_a_restarted_engine_resumes_where_the_saga_stopped(orders_db):
    hold = asyncio.Event()

    async def stalled_send(call: StepCall) -> Any:
        if call.route.subject == "payment.authorize":
            await hold.wait()
        return await Participants().send(call)

    engine = SagaEngine(orders_db, PLACE_ORDER, stalled_send, FAST)
    await orders_db.run(placing(engine, "ord_r", qty=1))
    assert not await engine.wait("saga_r", 0.2)
    await engine.stop()  # the process "dies" mid-step
    p = Participants()
    fresh = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    assert await fresh.resume_all() == 1
    assert await fresh.wait("saga_r", 5)
    assert p.subjects() == ["payment.authorize"]  # reserve is not repeated; authorize is re-sent
    assert p.calls[0][1] == "saga_r:authorize_payment:invoke"
    assert await order_status(orders_db, "ord_r") == ("CONFIRMED", None)


async def test_cancelling_a_confirmed_order_refunds_and_releases(orders_db):
    p = Participants()
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    saga_id = await place(orders_db, engine)
    await orders_db.run(lambda tx: orders.request_cancel(tx, c.CancelOrder(order_id="ord_1")))
    await engine.stop_forward(saga_id, "CANCELLED")
    assert await engine.wait(saga_id, 5)
    assert p.subjects()[-2:] == ["payment.refund", "inventory.release"]
    assert await order_status(orders_db) == ("CANCELLED", None)


async def test_a_business_answer_after_an_attempt_lost_in_a_crash_still_compensates(orders_db):
    hold = asyncio.Event()

    async def stalled_send(call: StepCall) -> Any:
        await hold.wait()  # the reserve was sent; the service dies before any answer
        raise AssertionError("never answered")

    engine = SagaEngine(orders_db, PLACE_ORDER, stalled_send, FAST)
    await orders_db.run(placing(engine, "ord_x", qty=1))
    assert not await engine.wait("saga_x", 0.1)
    await engine.stop()
    p = Participants(lambda call: OutOfStock("none left") if call.route.subject == "inventory.reserve" else None)
    fresh = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await fresh.resume_all()
    assert await fresh.wait("saga_x", 5)
    # the first reserve may have taken effect before the crash: it is released all the same
    assert p.subjects() == ["inventory.reserve", "inventory.release"]
    assert await order_status(orders_db, "ord_x") == ("FAILED", "OUT_OF_STOCK")


async def test_a_resumed_saga_sends_nothing_before_the_outbox_it_found_is_in_the_stream(settings, tmp_path):
    from bus.outbox import Relay
    from bus.stream import ensure_stream

    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    async with Database(tmp_path / "orders.db", "orders", ORDERS_SPEC.schema) as db:
        p = Participants()
        engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
        # Committed just before a crash: the order's creation event never left the outbox, and the saga
        # never started (the crash came first).
        await db.commit(placing(engine, "ord_r", started=False))
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


async def test_a_saga_whose_driver_fails_unexpectedly_starts_again_from_its_records(orders_db):
    failures = []

    def script(call: StepCall) -> Any:
        if call.route.subject == "inventory.reserve" and not failures:
            failures.append(call.idempotency_key)
            raise RuntimeError("a bug, or a database error, in the middle of a step")
        return None

    p = Participants(script)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    await place(orders_db, engine, "ord_d")  # returns when the first driver gave up
    await wait_for(lambda: order_status(orders_db, "ord_d"), what="the order to be readable")

    async def confirmed() -> bool:
        return (await order_status(orders_db, "ord_d"))[0] == "CONFIRMED"

    await wait_for(confirmed, what="the saga to be driven again and finish")
    # The failed attempt may have reached the participant: the step was sent again with the same key.
    assert p.subjects() == ["inventory.reserve", "inventory.reserve", "payment.authorize"]
    assert failures == [p.calls[1][1]]
    saga = await orders_db.read(lambda tx: engine.view(tx, "saga_ord_d"))
    reserve = next(r for r in saga.steps if (r.step, r.action) == ("reserve_stock", "invoke"))
    assert (reserve.attempts, reserve.uncertain) == (2, True)
    await engine.stop()


async def test_a_cancel_that_meets_a_failed_driver_goes_on_from_the_records_not_from_the_failed_run(orders_db):
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

    def script(call: StepCall) -> Any:
        if call.route.subject == "payment.authorize":  # a cancel arrives as the decline does: one batch holds both
            cancels.append(asyncio.create_task(engine.stop_forward("saga_ord_1", "CANCELLED")))
            return PaymentDeclined("no")
        return None

    p = Participants(script)
    engine = SagaEngine(orders_db, PLACE_ORDER.with_hooks(FailingOnce()), p.send, FAST, rng=random.Random(1))
    await place(orders_db, engine)  # returns when the failed driver gave up
    await cancels[0]

    async def ended() -> bool:
        return (await order_status(orders_db))[0] == "CANCELLED"

    await wait_for(ended, what="the saga to go on from its records and end")
    # Both the cancel and the failed driver's restart go on from the records: whichever reads them first
    # drives the saga, the other finds it taken. Judge once nothing is left to run, not at the first sight
    # of CANCELLED: a second driver would only show after it.
    await wait_for(lambda: not engine._tasks, what="the engine to have nothing left to drive")
    # The failed unit was rolled back, so the records say the authorize is still in doubt, and the cancel
    # stands: refund, then release. The run in memory, ahead of them, would have skipped the refund and the
    # order's turn back (its event included).
    assert p.subjects() == ["inventory.reserve", "payment.authorize", "payment.refund", "inventory.release"]
    kinds = await orders_db.read(
        lambda tx: [r[0].split(".")[2] for r in tx.all("SELECT subject FROM outbox ORDER BY seq")]
    )
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
    async with SlowToHearBack(tmp_path / "orders.db", "orders", ORDERS_SPEC.schema) as db:

        def script(call: StepCall) -> Any:
            if call.route.subject == "payment.authorize" and not failed:
                failed.append(call.idempotency_key)
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


async def test_a_stop_that_arrives_while_an_attempt_is_recorded_is_honoured_before_that_attempt_is_sent(orders_db):
    answers = iter([RequestTimeout("no answer")])
    p = Participants(lambda call: next(answers, None) if call.route.subject == "payment.authorize" else None)
    engine = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    record_start = engine.transitions.record_start

    def stop_arrives(tx: Any, run: Any, step: Any, action: Any, attempt: int) -> None:
        record_start(tx, run, step, action, attempt)
        if step.name == "authorize_payment" and attempt == 2:  # a cancel lands while the retry is being recorded
            run.stop_reason = "CANCELLED"
            run.wake.set()

    engine.transitions.record_start = stop_arrives  # type: ignore[method-assign]
    await place(orders_db, engine)
    # The second attempt was recorded but never sent: the saga turned back, undoing what the first may have done.
    assert p.subjects() == ["inventory.reserve", "payment.authorize", "payment.refund", "inventory.release"]
    assert await order_status(orders_db) == ("CANCELLED", None)
