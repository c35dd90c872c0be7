"""The saga's tables across versions: files of earlier builds migrate forward and keep what they hold, and
the listings read an index."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from bus.db import KERNEL, Database
from bus.ids import new_id
from bus.migrations import statements, versions
from bus.saga import repo
from bus.saga.engine import SagaEngine
from bus.saga.schema import MIGRATIONS as SAGA_MIGRATIONS
from bus.saga.state import SagaStatus
from order_svc import orders
from order_svc.saga import PLACE_ORDER, OrderLine, PlaceOrderData
from order_svc.service import SPEC as ORDERS_SPEC
from tests.sagas import FAST, Participants, order_status

FIXTURES = Path(__file__).parent / "fixtures"


def numbered_file(path: Path, scripts: list[str]) -> None:
    """A file as builds before the owners' version rows made it: `scripts` applied, counted by position."""
    conn = sqlite3.connect(path)
    try:
        for script in scripts:
            for statement in statements(script):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={len(scripts)}")
        conn.commit()
    finally:
        conn.close()


async def test_an_order_database_from_before_the_step_upgrades_keeps_its_step_records(tmp_path):
    path = tmp_path / "orders.db"
    # Versions 1 to 3 by position: the kernel's tables, the saga's first migration, the orders'.
    assert ORDERS_SPEC.schema.positions()[:2] == (("saga", 1), ("orders", 1))
    numbered_file(path, [KERNEL.scripts[0], SAGA_MIGRATIONS.scripts[0], orders.MIGRATIONS.scripts[0]])
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO saga_steps (saga_id, step, action, status, attempts, uncertain, started_at)"
        " VALUES ('saga_1', 'reserve_stock', 'invoke', 'RUNNING', 2, 1, 5.0)"
    )
    conn.execute(
        "INSERT INTO sagas (saga_id, name, ref, status, data, deadline_at, created_at, updated_at)"
        " VALUES ('saga_1', 'place_order', 'ord_1', 'RUNNING', '{}', 9e9, 5.0, 5.0)"
    )
    conn.commit()
    conn.close()
    async with Database(path, "orders", ORDERS_SPEC.schema) as db:
        engine = SagaEngine(db, PLACE_ORDER, Participants().send, FAST)
        saga = await db.read(lambda tx: engine.view(tx, "saga_1"))
        left = await db.read(lambda tx: tx.one("SELECT count(*) FROM saga_steps")[0])
        stored = await db.read(lambda tx: json.loads(repo.row(tx, "saga_1")["steps"]))
        indexes = await db.read(lambda tx: {r[0] for r in tx.all("SELECT name FROM sqlite_master WHERE type='index'")})
        reached = await db.read(lambda tx: versions(tx._conn))
    # The record moved into its saga's row, as it was.
    assert [(r.step, r.action, r.status, r.attempts, r.uncertain) for r in saga.steps] == [
        ("reserve_stock", "invoke", "RUNNING", 2, True)
    ]
    assert saga.steps[0].started_at is not None and left == 0
    assert stored[0]["uncertain"] is True  # as the engine writes it, not SQLite's 1
    assert "sagas_ref" not in indexes
    assert reached == {"kernel": 1, "saga": len(SAGA_MIGRATIONS.scripts), "orders": len(orders.MIGRATIONS.scripts)}


async def test_saga_listings_walk_an_index_newest_first_instead_of_sorting_every_saga(orders_db):
    engine = SagaEngine(orders_db, PLACE_ORDER, Participants().send, FAST)
    # Made one millisecond apart, in creation order: ids begin with their time, as `new_id` makes them.
    start = int(new_id("saga")[5:17], 16)
    ids = [f"saga_{start + n:012x}{random.getrandbits(48):012x}" for n in range(300)]
    order = list(range(300))
    random.shuffle(order)  # inserted out of order: only the ids tell which is newest

    def insert(tx: Any) -> None:
        for n in order:
            data = PlaceOrderData(order_id=f"ord_{n}", customer_id="c1", items=[], payment_method="card")
            run = engine.transitions.create(tx, ids[n], f"ord_{n}", data)  # not started: only listed
            if n % 3:
                run.status = SagaStatus.COMPLETED
                repo.save(tx, run, 0.0)

    await orders_db.run(insert)
    newest = await orders_db.read(lambda tx: [v.saga_id for v in engine.list(tx, None, False, 5)])
    completed = await orders_db.read(lambda tx: [v.saga_id for v in engine.list(tx, "COMPLETED", False, 5)])
    assert newest == ids[::-1][:5]  # the last five made, newest first
    assert completed == [saga_id for n, saga_id in reversed(list(enumerate(ids))) if n % 3][:5]

    def plans(tx: Any) -> list[str]:
        seen: list[str] = []
        tx._conn.set_trace_callback(seen.append)
        try:
            engine.list(tx, None, False, 5)
            engine.list(tx, "COMPLETED", False, 5)
        finally:
            tx._conn.set_trace_callback(None)
        listings = [sql for sql in seen if sql.startswith("SELECT * FROM sagas")]
        return [" / ".join(row[3] for row in tx.all("EXPLAIN QUERY PLAN " + sql)) for sql in listings]

    found = await orders_db.read(plans)
    assert len(found) == 2
    assert all("INDEX" in plan and "TEMP B-TREE" not in plan for plan in found), found


async def test_a_database_written_by_the_build_before_migrates_and_resumes_its_unfinished_sagas(tmp_path):
    """`fixtures/orders-f2055dd.db` was made by main at f2055dd with `fixtures/make_orders_db.py`: the order
    service run in-process with scripted participants on the wire that never answer some requests, then
    stopped. Each order's SKU says what happened to it (see the script): one CONFIRMED, one FAILED out of
    stock, two RUNNING (held at their reserve, at their authorize), three COMPENSATING (after a decline,
    after a cancel, after an operator's abort), each with attempts in doubt; deadlines ten years out. The
    file counts its migrations by position (user_version 6)."""
    path = tmp_path / "orders.db"
    shutil.copyfile(FIXTURES / "orders-f2055dd.db", path)
    p = Participants()
    async with Database(path, "orders", ORDERS_SPEC.schema) as db:
        reached = await db.read(lambda tx: versions(tx._conn))
        # position 6 was every migration of the time; the ones added since (fulfilment's) ran on top
        assert reached == {"kernel": 1, "saga": 4, "orders": len(orders.MIGRATIONS.scripts)}
        by_sku = {
            row["sku"]: (row["order_id"], row["saga_id"])
            for row in await db.read(
                lambda tx: tx.all("SELECT order_id, saga_id, json_extract(items, '$[0].sku') AS sku FROM orders")
            )
        }
        engine = SagaEngine(db, PLACE_ORDER, p.send, FAST)
        assert await engine.resume_all() == 5
        for _, saga_id in by_sku.values():
            assert await engine.wait(saga_id, 10)
        outcomes = {sku: await order_status(db, order_id) for sku, (order_id, _) in by_sku.items()}
        data = await db.read(lambda tx: repo.run_of(repo.row(tx, by_sku["HANG-A"][1]), PlaceOrderData).data)
        await engine.stop()

    def sent(sku: str) -> list[str]:
        saga_id = by_sku[sku][1]
        return [key.removeprefix(saga_id + ":") for _, key in p.calls if key.startswith(saga_id + ":")]

    assert outcomes == {
        "OK-1": ("CONFIRMED", None),
        "NONE-1": ("FAILED", "OUT_OF_STOCK"),
        "HANG-R": ("CONFIRMED", None),
        "HANG-A": ("CONFIRMED", None),
        "DECL-1": ("FAILED", "PAYMENT_DECLINED"),
        "CANC-1": ("CANCELLED", None),
        "ABRT-1": ("FAILED", "ABORTED"),
    }
    # Each goes on from where it stopped, with the keys it used before: the step in doubt is sent again.
    assert sent("HANG-R") == ["reserve_stock:invoke", "authorize_payment:invoke"]
    assert sent("HANG-A") == ["authorize_payment:invoke"]
    assert sent("DECL-1") == ["reserve_stock:compensate"]
    assert sent("CANC-1") == ["authorize_payment:compensate", "reserve_stock:compensate"]
    assert sent("ABRT-1") == ["reserve_stock:compensate"]
    assert sent("OK-1") == sent("NONE-1") == []
    # Its data came back typed: what was asked, and the total the reservation had fixed before.
    assert data.items == [OrderLine(sku="HANG-A", qty=2)] and (data.total_cents, data.currency) == (2000, "USD")
