"""Rebuilding a saga from the order service's events (bus.saga.replay, order_svc.replay), without a broker:
the events of one database projected onto a fresh one, and the rebuilt saga driven on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus import contract as c
from bus import jsonb
from bus.db import Database
from bus.errors import Unavailable
from bus.saga import repo
from bus.saga.definition import StepCall
from bus.saga.engine import SagaEngine
from bus.settings import Settings
from order_svc import replay
from order_svc.saga import PLACE_ORDER
from order_svc.service import SPEC as ORDERS_SPEC
from tests.conftest import wait_for
from tests.sagas import FAST, Participants, authorization, order_status, place, placing, reservation


async def outbox_events(db: Database) -> list[dict[str, Any]]:
    """What the database committed, as its events: all a lost database leaves behind."""
    return await db.read(lambda tx: [jsonb.loads(r["body"]) for r in tx.all("SELECT body FROM outbox ORDER BY seq")])


async def rebuilt_from(path: Any, events: list[dict[str, Any]], *, finish: bool = True) -> Database:
    """A fresh order database with `events` projected onto it (and the rebuild's last step, `finish`)."""
    db = await Database(path, "orders", ORDERS_SPEC.schema).open()

    def project(tx: Any) -> None:
        for body in events:
            replay.apply(tx, c.Event.model_validate(body))
        if finish:
            replay.after_replay(tx, Settings())

    await db.run(project)
    return db


async def test_an_abort_is_an_event_and_a_rebuild_turns_the_saga_back_as_well(orders_db, tmp_path):
    paying, release = asyncio.Event(), asyncio.Event()

    async def authorize_waits(call: StepCall) -> Any:
        if call.route.subject == "payment.authorize":
            paying.set()
            await release.wait()
        return await Participants().send(call)

    engine = SagaEngine(orders_db, PLACE_ORDER, authorize_waits, FAST)
    placing_order = asyncio.create_task(place(orders_db, engine, "ord_a"))
    await asyncio.wait_for(paying.wait(), 10)
    # turns back at the step's end
    assert await engine.stop_forward("saga_ord_a", "ABORTED", note="payment provider incident") == "RUNNING"
    release.set()
    await placing_order
    assert await order_status(orders_db, "ord_a") == ("FAILED", "ABORTED")
    events = await outbox_events(orders_db)
    types = [e["type"] for e in events]
    assert "abort_requested" in types and types.index("abort_requested") < types.index("order_compensating")
    abort = events[types.index("abort_requested")]["data"]
    assert abort == {"reason": "ABORTED", "note": "payment provider incident"}  # the operator's words are kept

    # A rebuild that saw the abort but not yet the turn back (the database lost in between) turns back too.
    upto = types.index("abort_requested") + 1
    rebuilt = await rebuilt_from(tmp_path / "rebuilt.db", events[:upto], finish=False)
    try:
        row = await rebuilt.read(lambda tx: repo.row(tx, "saga_ord_a"))
        assert (row["status"], row["stop_reason"]) == ("RUNNING", "ABORTED")
    finally:
        await rebuilt.close()


@pytest.mark.parametrize("refused", ["inventory.reserve", "payment.authorize"])
async def test_a_step_refused_by_the_check_is_still_undone_after_the_order_database_is_rebuilt(
    orders_db, tmp_path, refused
):
    undo = {"inventory.reserve": "inventory.release", "payment.authorize": "payment.refund"}[refused]
    reachable = asyncio.Event()  # compensations fail until the database is lost and rebuilt

    def script(call: StepCall) -> Any:
        subject = call.route.subject
        if subject == refused == "inventory.reserve":
            return reservation(call, fewer=1)  # one unit fewer than asked
        if subject == refused == "payment.authorize":
            return authorization(call, amount_cents=1)
        if subject in ("inventory.release", "payment.refund") and not reachable.is_set():
            return Unavailable("down")
        return None

    before = Participants(script)
    engine = SagaEngine(orders_db, PLACE_ORDER, before.send, FAST)
    await orders_db.run(placing(engine, "ord_1", saga_id="saga_ord_1"))
    await wait_for(lambda: undo in before.subjects(), what="the refused step's compensation to be tried")
    await engine.stop()

    # The order database is lost; what its events tell is all that is left.
    rebuilt = await rebuilt_from(tmp_path / "rebuilt.db", await outbox_events(orders_db))
    try:
        reachable.set()
        after = Participants(script)
        resumed = SagaEngine(rebuilt, PLACE_ORDER, after.send, FAST)
        await resumed.resume_all()
        assert await resumed.wait("saga_ord_1", 10)
        status = await order_status(rebuilt)
        await resumed.stop()
    finally:
        await rebuilt.close()
    # What the participant did on the refused request is undone, rebuilt or not.
    assert undo in after.subjects() and status == ("FAILED", "CONFLICT")
