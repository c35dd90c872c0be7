"""The order service's handlers against a saga in flight, without a broker: cancels, aborts and retries
meet the engine's stop protocol (scripted participants; the handlers get the database and the engine)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from bus import contract as c
from bus import subjects as s
from bus.db import Database
from bus.errors import Conflict, RequestTimeout
from bus.idempotency import request_hash
from bus.saga import repo
from bus.saga.definition import StepCall
from bus.saga.engine import SagaEngine
from bus.saga.state import SagaRun
from bus.service import Call
from bus.settings import SagaSettings
from order_svc.saga import PLACE_ORDER, PlaceOrderData
from order_svc.service import Orders
from tests.conftest import wait_for
from tests.sagas import FAST, Participants, held_at, order_status, placing


async def held_saga(db: Database, order_id: str) -> tuple[SagaEngine[PlaceOrderData], asyncio.Event]:
    """A saga started and held at its authorize request until the returned gate opens."""
    gate, reached = asyncio.Event(), asyncio.Event()
    engine = SagaEngine(db, PLACE_ORDER, held_at("payment.authorize", gate, reached), FAST)
    await db.run(placing(engine, order_id, qty=1))
    await asyncio.wait_for(reached.wait(), 10)
    return engine, gate


def stop_noted(db: Database, saga_id: str, reason: str) -> Any:
    """A condition for `wait_for`: the saga's stop is committed with this reason."""

    async def noted() -> bool:
        row = await db.read(lambda tx: repo.row(tx, saga_id))
        return row["stop_reason"] == reason

    return noted


async def test_a_cancel_accepted_just_before_a_crash_still_turns_the_saga_back(orders_db):
    engine, _ = await held_saga(orders_db, "ord_c")

    class Died(Exception):
        pass

    def dies(run: SagaRun[Any]) -> None:  # the process dies as soon as the cancel has committed
        raise Died

    engine.stopped = dies  # type: ignore[method-assign]
    with pytest.raises(Died):
        await Orders(orders_db, engine).cancel(
            c.CancelOrder(order_id="ord_c", reason="changed mind"), Call(s.ORDERS_CANCEL)
        )
    await engine.stop()
    p = Participants()
    fresh = SagaEngine(orders_db, PLACE_ORDER, p.send, FAST)
    assert await fresh.resume_all() == 1
    assert await fresh.wait("saga_c", 10)
    # The cancel and the saga's stop were one unit of work: the restarted saga turns back instead of confirming.
    assert await order_status(orders_db, "ord_c") == ("CANCELLED", None)
    assert p.subjects() == ["payment.refund", "inventory.release"]  # the authorize may have happened: undone too


async def test_an_abort_that_finds_the_saga_completed_leaves_the_confirmed_order_alone(orders_db):
    engine = SagaEngine(orders_db, PLACE_ORDER, Participants().send, FAST)
    await orders_db.run(placing(engine, "ord_a", qty=1))
    assert await engine.wait("saga_a", 10)
    assert await order_status(orders_db, "ord_a") == ("CONFIRMED", None)
    # Only a cancel reopens a completed saga: a stop that may not reopen leaves it as it is ...
    assert await engine.stop_forward("saga_a", "ABORTED", reopen=False) == "COMPLETED"
    # ... and the abort checks and stops in one unit of work, so a saga completing meanwhile is refused.
    with pytest.raises(Conflict, match="is COMPLETED; only a running saga can be aborted"):
        await Orders(orders_db, engine).saga_abort(c.SagaAbort(saga_id="saga_a"), Call(s.SAGA_ABORT))
    assert await order_status(orders_db, "ord_a") == ("CONFIRMED", None)


async def test_an_abort_repeated_with_its_key_answers_without_acting_again(orders_db):
    engine, gate = await held_saga(orders_db, "ord_k")
    handlers = Orders(orders_db, engine)
    abort = c.SagaAbort(saga_id="saga_k", reason="incident")
    first = asyncio.create_task(handlers.saga_abort(abort, Call(s.SAGA_ABORT, "abort-1")))
    await wait_for(stop_noted(orders_db, "saga_k", "ABORTED"), what="the abort to be noted")
    gate.set()
    assert (await first).status == "FAILED"
    # The same key again: the stored answer, then the saga as it is now; not "only a running saga can be aborted".
    again = await handlers.saga_abort(abort, Call(s.SAGA_ABORT, "abort-1"))
    assert (again.status, again.failure_reason) == ("FAILED", "ABORTED")
    stored = await orders_db.read(lambda tx: tx.one("SELECT request_hash FROM idempotency WHERE key = 'abort-1'"))
    assert stored["request_hash"] == request_hash(abort)


async def test_the_first_stop_asked_for_wins_a_cancel_then_an_abort_ends_cancelled(orders_db):
    engine, gate = await held_saga(orders_db, "ord_b")
    handlers = Orders(orders_db, engine)
    cancel = asyncio.create_task(handlers.cancel(c.CancelOrder(order_id="ord_b"), Call(s.ORDERS_CANCEL)))
    await wait_for(stop_noted(orders_db, "saga_b", "CANCELLED"), what="the cancel to be noted")
    stopped, asked = engine.stopped, asyncio.Event()

    def abort_asked(run: SagaRun[Any]) -> None:  # the abort's unit of work has committed
        try:
            stopped(run)
        finally:
            asked.set()

    engine.stopped = abort_asked  # type: ignore[method-assign]
    abort = asyncio.create_task(handlers.saga_abort(c.SagaAbort(saga_id="saga_b"), Call(s.SAGA_ABORT)))
    await asyncio.wait_for(asked.wait(), 10)  # the abort is in before the saga moves on
    gate.set()
    assert (await cancel).status == c.OrderStatus.CANCELLED
    assert (await abort).status == "CANCELLED"
    assert await order_status(orders_db, "ord_b") == ("CANCELLED", None)


async def test_a_cancel_asked_for_while_a_request_is_out_does_not_wait_out_the_backoff(orders_db):
    # A minute of backoff after a timeout: without the wake that came during the request, the saga sleeps it out.
    slow = SagaSettings(step_timeout_ms=50, deadline_ms=600_000, retry_initial_ms=60_000, retry_max_interval_ms=60_000)
    gate, reached = asyncio.Event(), asyncio.Event()

    async def send(call: StepCall) -> Any:
        if call.route.subject == "payment.authorize" and not gate.is_set():
            reached.set()
            await gate.wait()
            raise RequestTimeout("no answer")
        return await Participants().send(call)

    class Longest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    engine = SagaEngine(orders_db, PLACE_ORDER, send, slow, rng=Longest())
    await orders_db.run(placing(engine, "ord_w", qty=1))
    await asyncio.wait_for(reached.wait(), 10)
    handlers = Orders(orders_db, engine)
    cancel = asyncio.create_task(handlers.cancel(c.CancelOrder(order_id="ord_w"), Call(s.ORDERS_CANCEL)))
    await wait_for(lambda: engine._runs["saga_w"].stop_reason == "CANCELLED", what="the cancel to be noted")
    gate.set()  # the authorize times out after the cancel arrived
    assert (await cancel).status == c.OrderStatus.CANCELLED  # within the cancel's own wait (10 s), not a minute


async def test_a_cancel_committed_with_the_placing_unit_reaches_the_run_that_drives_it(orders_db):
    gate, reached = asyncio.Event(), asyncio.Event()
    engine = SagaEngine(orders_db, PLACE_ORDER, held_at("payment.authorize", gate, reached), FAST)
    gate.set()
    # Queued together, the placing unit and the cancel's commit in one batch: the cancel's unit reads the saga
    # before its run is started (at the end of the batch), so it notes the stop on a run read from the row, and
    # the run the placing unit started learns it from there.
    # gather starts its tasks in order, and each queues its unit before it first waits: the placing unit is
    # queued first, and the writer takes both in its next batch.
    _, order = await asyncio.gather(
        orders_db.run(placing(engine, "ord_p", qty=1)),
        Orders(orders_db, engine).cancel(c.CancelOrder(order_id="ord_p"), Call(s.ORDERS_CANCEL)),
    )
    assert order.status == c.OrderStatus.CANCELLED
    assert await order_status(orders_db, "ord_p") == ("CANCELLED", None)


async def test_a_retry_repeated_with_its_key_after_the_saga_ended_answers_as_before(orders_db):
    engine = SagaEngine(orders_db, PLACE_ORDER, Participants().send, FAST)
    await orders_db.run(placing(engine, "ord_r", qty=1))
    assert await engine.wait("saga_r", 10)
    handlers = Orders(orders_db, engine)
    with pytest.raises(Conflict, match="is COMPLETED; only a running saga can be retried"):
        await handlers.saga_retry(c.SagaRef(saga_id="saga_r"), Call(s.SAGA_RETRY, "retry-1"))
    # The refusal is the key's stored answer: the same again, not a new decision.
    stored = await orders_db.read(lambda tx: tx.one("SELECT reply FROM idempotency WHERE key = 'retry-1'"))
    assert b"CONFLICT" in stored["reply"]
    with pytest.raises(Conflict, match="is COMPLETED"):
        await handlers.saga_retry(c.SagaRef(saga_id="saga_r"), Call(s.SAGA_RETRY, "retry-1"))
