"""The shared kernel: group commit, the outbox relay, idempotency and the service runner."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from bus import contract as c
from bus import loop
from bus.app import running
from bus.audit import run_audit
from bus.db import Acked, Database
from bus.errors import Conflict, OutOfStock
from bus.filelock import DatabaseInUse, Holder, hold_lock, release_lock
from bus.idempotency import once, request_hash
from bus.migrations import Migrations, Schema, versions
from bus.outbox import Relay
from bus.settings import Settings
from bus.sqlite import SQLITE_NEEDED, require_sqlite
from bus.stream import ensure_stream
from bus.unit import Rejected
from tests.conftest import outlast_duplicate_window, repeated_ids, stream_events, wait_for

MIGRATION = "CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
COUNTER = Schema(Migrations("counter", (MIGRATION,)))


async def test_units_of_work_commit_together_and_fail_alone(tmp_path):
    async with Database(tmp_path / "k.db", "test", COUNTER) as db:

        def bump(tx):
            tx.execute("INSERT INTO counter VALUES ('n', 1) ON CONFLICT(name) DO UPDATE SET value = value + 1")
            return tx.one("SELECT value FROM counter WHERE name='n'")["value"]

        def broken(tx):
            tx.execute("INSERT INTO counter VALUES ('x', 1)")
            raise RuntimeError("boom")

        results = await asyncio.gather(*(db.run(bump) for _ in range(200)), db.run(broken), return_exceptions=True)
        assert sorted(r for r in results if isinstance(r, int)) == list(range(1, 201))
        assert isinstance(results[-1], RuntimeError)
        assert await db.read(lambda tx: tx.one("SELECT count(*) FROM counter WHERE name='x'")[0]) == 0
        assert db.commits < 200  # concurrent units shared commits


async def test_a_rejected_unit_keeps_its_changes_and_its_error_is_raised(tmp_path):
    async with Database(tmp_path / "k.db", "test", COUNTER) as db:

        def declined(tx):
            tx.execute("INSERT INTO counter VALUES ('d', 1)")
            return Rejected(OutOfStock("none left"))

        with pytest.raises(OutOfStock):
            await db.run(declined)
        assert await db.read(lambda tx: tx.one("SELECT value FROM counter WHERE name='d'")[0]) == 1


async def test_after_commit_hooks_run_once_their_unit_committed_and_never_for_one_undone_or_failed(tmp_path):
    async with Database(tmp_path / "k.db", "test", COUNTER) as db:
        heard: list[str] = []

        def unit(name: str, *, undo: bool = False, fail: bool = False) -> Any:
            def fn(tx: Any) -> str:
                tx.execute("INSERT INTO counter VALUES (?, 1)", (name,))
                tx.after_commit(lambda: heard.append(name))
                if undo:
                    tx.undo()
                if fail:
                    raise RuntimeError(name)
                return name

            return fn

        kept, undone, failed = await asyncio.gather(
            db.run(unit("kept")),
            db.run(unit("undone", undo=True)),
            db.run(unit("failed", fail=True)),
            return_exceptions=True,
        )
        assert (kept, undone) == ("kept", "undone") and isinstance(failed, RuntimeError)
        assert heard == ["kept"]  # before its caller resumed

        def broken_hook(tx: Any) -> None:
            tx.execute("INSERT INTO counter VALUES ('hooked', 1)")
            tx.after_commit(lambda: 1 / 0)

        with pytest.raises(ZeroDivisionError):  # its caller hears of it, as of a crash after the commit ...
            await db.run(broken_hook)
        rows = await db.read(lambda tx: [r[0] for r in tx.all("SELECT name FROM counter ORDER BY name")])
        assert rows == ["hooked", "kept"]  # ... and the writes stay


async def test_run_waits_for_the_stream_as_its_level_says(tmp_path):
    class Acks:
        """A publisher that hears what is committed and remembers what it was asked to wait for."""

        enqueued_seq = 0

        def __init__(self) -> None:
            self.waited: list[int] = []

        def enqueue(self, rows: Any) -> None:
            self.enqueued_seq = rows[-1].seq

        async def published(self, seq: int) -> None:
            self.waited.append(seq)

    async with Database(tmp_path / "k.db", "test", COUNTER) as db:
        acks = Acks()
        db.publish_with(acks)

        def emits(tx: Any) -> None:
            tx.emit("counted", "k", {})

        def quiet(tx: Any) -> None:
            tx.execute("INSERT INTO counter VALUES ('q', 1) ON CONFLICT DO NOTHING")

        await db.run(emits, wait=Acked.NONE)
        await db.run(quiet, wait=Acked.OWN)
        assert acks.waited == []  # nothing, and nothing of its own
        await db.run(emits, wait=Acked.OWN)
        await db.run(quiet, wait=Acked.ALL)  # everything committed before it
        await db.run(emits)  # ALL, the default: its own, and so everything before
        assert acks.waited == [2, 2, 3]


def test_a_reply_is_read_as_its_routes_model_and_one_that_does_not_fit_is_a_bad_reply():
    from bus.client import decode_reply_as
    from bus.errors import BadReply, OmsError

    released = json.dumps({"ok": True, "result": {"order_id": "o1", "status": "RELEASED", "extra": 1}}).encode()
    assert decode_reply_as("inventory.release", released, c.Released) == c.Released(order_id="o1")
    with pytest.raises(BadReply, match="does not fit Reservation"):
        decode_reply_as("inventory.reserve", released, c.Reservation)
    refused = json.dumps({"ok": False, "error": {"code": "OUT_OF_STOCK", "message": "none"}}).encode()
    with pytest.raises(OutOfStock):
        decode_reply_as("inventory.reserve", refused, c.Reservation)
    with pytest.raises(OmsError, match="not JSON") as raised:
        decode_reply_as("inventory.reserve", b"\xff", c.Reservation)
    assert not isinstance(raised.value, BadReply)


def test_an_sqlite_too_old_for_the_statements_is_refused_with_the_reason():
    require_sqlite(SQLITE_NEEDED)  # this machine's, or newer, passes: the suite runs on it
    with pytest.raises(RuntimeError, match=r"SQLite 3\.34\.1 is too old: OMS needs 3\.38\.0 or later"):
        require_sqlite((3, 34, 1))


def test_a_service_started_while_its_database_is_rebuilt_exits_with_the_reason_and_no_traceback(tmp_path):
    path = Settings(home=tmp_path).db_path("payment")
    path.parent.mkdir(parents=True)
    rebuilding = hold_lock(path, "payment", Holder.REBUILD)  # as `oms recover payment` holds it
    try:
        env = {**os.environ, "OMS_HOME": str(tmp_path), "OMS_NATS_URL": "nats://127.0.0.1:1"}
        proc = subprocess.run(
            [sys.executable, "-m", "payment_svc"], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        release_lock(rebuilding)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"payment: {path} is being rebuilt by replay (pid {os.getpid()}): start the service when that is done"
    )
    assert "Traceback" not in proc.stderr


async def test_a_database_open_in_one_place_is_refused_everywhere_else_naming_its_holder(tmp_path):
    path = tmp_path / "k.db"
    async with Database(path, "inventory", COUNTER):
        with pytest.raises(DatabaseInUse, match=rf"in use by another inventory instance \(pid {os.getpid()}\)"):
            await Database(path, "inventory", COUNTER).open()
        with pytest.raises(DatabaseInUse, match=rf"open in a running inventory service \(pid {os.getpid()}\)"):
            hold_lock(path, "inventory", Holder.REBUILD)
    async with Database(path, "inventory", COUNTER):  # closed: free again, for anyone
        pass
    release_lock(hold_lock(path, "inventory", Holder.REBUILD))


async def test_migrations_run_once(tmp_path):
    async with Database(tmp_path / "k.db", "test", COUNTER):
        pass
    async with Database(tmp_path / "k.db", "test", COUNTER) as db:
        assert await db.read(lambda tx: versions(tx._conn)) == {"kernel": 1, "counter": 1}


async def test_idempotency_key_replays_the_stored_reply_and_refuses_a_different_request(tmp_path):
    async with Database(tmp_path / "k.db", "test", COUNTER) as db:
        cmd = c.Release(order_id="o1")
        other = c.Release(order_id="o2")
        calls = []

        def effect(tx):
            calls.append(1)
            tx.execute("INSERT INTO counter VALUES ('o1', 1)")
            return c.Released(order_id="o1")

        first, second = await asyncio.gather(
            db.run(once("k1", "inventory.release", request_hash(cmd), effect)),
            db.run(once("k1", "inventory.release", request_hash(cmd), effect)),
        )
        assert len(calls) == 1
        assert first.order_id == "o1" and second["order_id"] == "o1"
        with pytest.raises(Conflict):
            await db.run(once("k1", "inventory.release", request_hash(other), effect))


async def test_a_business_error_raised_after_an_emit_takes_its_event_back_with_its_rows(tmp_path):
    async with Database(tmp_path / "k.db", "test", COUNTER) as db:
        cmd = c.Release(order_id="o1")

        def effect(tx):
            tx.execute("INSERT INTO counter VALUES ('o1', 1)")
            tx.emit("counted", "o1", {"name": "o1"}, order_id="o1")
            raise Conflict("changed its mind after the event")

        outcome, events = await db.commit(once("k1", "inventory.release", request_hash(cmd), effect))
        assert isinstance(outcome, Rejected) and isinstance(outcome.error, Conflict)  # stored as the reply, answered
        assert events == []  # nothing for the relay to publish: the change it recorded was rolled back
        assert await db.read(lambda tx: tx.one("SELECT count(*) FROM outbox")[0]) == 0
        assert await db.read(lambda tx: tx.one("SELECT count(*) FROM counter")[0]) == 0
        assert await db.read(lambda tx: tx.one("SELECT count(*) FROM idempotency WHERE key = 'k1'")[0]) == 1


@contextlib.asynccontextmanager
async def relayed(settings: Settings, tmp_path) -> AsyncIterator[tuple[Database, Relay, Any]]:
    """A database whose events a started relay publishes to the test server's stream."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_stream(nc, js, settings)
    try:
        async with Database(tmp_path / "k.db", "inventory", COUNTER) as db:
            relay = Relay(js, db, settings.stream_name)
            await relay.start()
            try:
                yield db, relay, js
            finally:
                await relay.stop()
    finally:
        await nc.close()


async def test_relay_publishes_each_event_once_and_answers_after_the_ack(settings: Settings, tmp_path):
    async with relayed(settings, tmp_path) as (db, relay, js):

        def emit(i):
            return lambda tx: tx.emit("stock_restocked", f"SKU{i}", {"i": i})

        await asyncio.gather(*(db.run(emit(i)) for i in range(50)))
        info = await js.stream_info(settings.stream_name)
        assert info.state.messages == 50  # every write returned only after its ack
        await relay.stop()
        assert relay.backlog == 0
        leftover = await db.unsent_events()
        assert len(leftover) <= 50
        # a restarted relay resends what the outbox still holds; the stream drops the duplicates
        relay2 = Relay(js, db, settings.stream_name)
        await relay2.start()
        await relay2.drain(5)
        await relay2.stop()
        info = await js.stream_info(settings.stream_name)
        assert info.state.messages == 50
        msg = await js.get_last_msg(settings.stream_name, "events.inventory.stock_restocked.SKU7")
        assert json.loads(msg.data)["data"] == {"i": 7}


async def test_acknowledged_events_leave_the_outbox_also_when_no_write_follows(settings: Settings, tmp_path):
    async with relayed(settings, tmp_path) as (db, relay, _):
        await asyncio.gather(*(db.run(lambda tx, i=i: tx.emit("stock_restocked", f"S{i}", {})) for i in range(20)))
        assert relay.backlog == 0
        # the delete rides on the next batch; with none coming, an empty one carries it

        async def outbox_empty() -> bool:
            return await db.unsent_events() == []

        await wait_for(outbox_empty, timeout=5, what="the outbox to empty")
        await relay.stop()


async def test_events_a_crash_left_in_the_outbox_after_their_ack_are_stored_once_after_a_long_outage(
    settings: Settings, tmp_path
):
    short = settings.model_copy(update={"stream_duplicate_window_s": 1})
    nc = await nats.connect(short.nats_url)
    js = nc.jetstream()
    await ensure_stream(nc, js, short)
    path = tmp_path / "k.db"

    def emit(i: int):
        return lambda tx: tx.emit("stock_restocked", f"S{i}", {"i": i})

    async with Database(path, "inventory", COUNTER, forget_after_s=0.05) as db:
        relay = Relay(js, db, short.stream_name)
        await relay.start()
        await asyncio.gather(*(db.run(emit(i)) for i in range(5)))  # sent, acknowledged and forgotten

        async def forgotten() -> bool:
            return await db.unsent_events() == []

        await wait_for(forgotten, timeout=5, what="the outbox to empty")
        await relay.stop()
        # Then a relay that sent these and was killed before their delete: 30 acknowledged, 2 more out of
        # order (as a rebuild publishes an old file's leftovers), 8 never sent.
        await asyncio.gather(*(db.commit(emit(i)) for i in range(5, 45)))
        left = await db.unsent_events()
    assert len(left) == 40
    sent = [*left[:30], left[32], left[35]]
    for row in sent:
        await js.publish(row.subject, row.body, stream=short.stream_name, headers={"Nats-Msg-Id": row.event_id})
    await outlast_duplicate_window(js, short.stream_name)

    async with Database(path, "inventory", COUNTER, forget_after_s=3600) as db:
        relay = Relay(js, db, short.stream_name)
        await relay.start()
        assert await relay.drain(10)
        assert relay.found_stored == 32 and relay.published_total == 8
        assert relay.lookup is not None and relay.lookup.read == 32  # from the floor on, not the 5 before it
        assert relay.acked_seq == left[-1].seq
        await relay.stop()
        # What was found left the outbox at once, and the floor moved past it: after another crash only the
        # 8 sent since would be looked up again.
        assert [r.event_id for r in await db.unsent_events()] == [r.event_id for r in left if r not in sent]
    events = await stream_events(nc, short)
    assert repeated_ids(events) == {}
    assert len(events) == 45
    await nc.close()


def test_now_iso_is_the_current_utc_time_to_the_millisecond():
    import re
    import time

    from bus.ids import now_iso, parse_iso

    for _ in range(500):
        before = time.time()
        text = now_iso()
        after = time.time()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
        assert before - 0.0011 <= parse_iso(text) <= after + 0.0001  # truncated, never rounded up


async def test_a_key_stored_under_the_earlier_request_hash_still_replays(tmp_path):
    import hashlib

    async with Database(tmp_path / "k.db", "test", COUNTER) as db:
        cmd = c.Authorize(order_id="o1", customer_id="c1", amount_cents=100, currency="USD", method="card")
        earlier = hashlib.sha256(
            json.dumps(cmd.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        assert earlier != request_hash(cmd)
        stored = json.dumps({"ok": True, "result": {"order_id": "o1"}}).encode()
        await db.run(
            lambda tx: tx.execute(
                "INSERT INTO idempotency VALUES ('k1', 'payment.authorize', ?, ?, '2026-01-01T00:00:00.000Z')",
                (earlier, stored),
            )
        )

        def effect(tx):
            raise AssertionError("a repeat must not run the effect again")

        digest = request_hash(cmd)
        again = await db.run(once("k1", "payment.authorize", digest, effect, cmd=cmd))
        assert again == {"order_id": "o1"}
        other = cmd.model_copy(update={"amount_cents": 200})
        with pytest.raises(Conflict):
            await db.run(once("k1", "payment.authorize", request_hash(other), effect, cmd=other))


async def test_a_graceful_stop_publishes_what_was_committed(settings: Settings):
    from inventory_svc.service import SPEC as INVENTORY

    async with running(INVENTORY, settings, serve_metrics=False) as k:
        # committed but not waited for (more than the stop's own round trips give time to publish):
        # the stop must still get them all into the stream
        def many(tx):
            for i in range(3000):
                tx.emit("stock_restocked", f"GRACE-{i}", {"qty": 1})

        _, events = await k.db.commit(many)
    assert k.relay.backlog == 0
    nc = await nats.connect(settings.nats_url)
    msg = await nc.jetstream().get_last_msg(settings.stream_name, "events.inventory.stock_restocked.GRACE-2999")
    assert json.loads(msg.data)["event_id"] == events[-1].event_id
    await nc.close()
    # ... and deleted from the outbox: the next start has nothing to look up in the stream.
    async with Database(settings.db_path("inventory"), "inventory", INVENTORY.schema) as db:
        assert await db.unsent_events() == []


async def test_a_graceful_stop_keeps_to_its_budget_with_a_request_that_will_not_finish(settings: Settings):
    from bus import contract as c
    from bus import subjects as s
    from payment_svc.service import SPEC as PAYMENT

    budget = settings.model_copy(update={"stop_budget_s": 0.5})
    nc = await nats.connect(settings.nats_url)
    try:
        async with running(PAYMENT, budget, serve_metrics=False) as k:
            k.runner.chaos.set(c.ChaosSet(latency_ms=60_000, endpoints=["list"]))  # a request stuck for a minute
            stuck = asyncio.create_task(nc.request(s.PAYMENT_LIST.subject, b"{}", timeout=90))
            await wait_for(lambda: k.runner.in_flight == 1, what="the request to be in flight")
            stopping = time.monotonic()
        took = time.monotonic() - stopping
        stuck.cancel()
    finally:
        await nc.close()
    # Each phase used to wait up to 5 s whatever the others had taken (up to 20 s in all, where `oms down`
    # kills after 10): the stuck request alone held the stop for 5 s. Now all of it is within the budget.
    assert took < 4.0, f"the stop took {took:.1f} s with a budget of 0.5 s"


async def test_events_committed_while_the_stream_is_missing_go_out_once_and_in_order_when_it_appears(
    settings: Settings, tmp_path
):
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    async with Database(tmp_path / "k.db", "inventory", COUNTER) as db:
        relay = Relay(js, db, settings.stream_name)
        await relay.start()
        # several batches' worth, committed together: they are published, refused, and kept
        await asyncio.gather(
            *(db.commit(lambda tx, i=i: tx.emit("stock_restocked", f"P{i}", {"i": i})) for i in range(600))
        )
        await wait_for(lambda: relay.failures >= 1, what="the publishes to be refused")
        assert relay.backlog == 600 and relay.published_total == 0
        await ensure_stream(nc, js, settings)
        assert await relay.drain(15)
        await relay.stop()
    info = await js.stream_info(settings.stream_name)
    assert info.state.messages == 600
    order = [json.loads((await js.get_msg(settings.stream_name, seq)).data)["data"]["i"] for seq in range(1, 601)]
    assert order == sorted(order)
    await nc.close()


async def test_a_repeated_key_is_answered_only_once_the_first_requests_events_are_in_the_stream(
    settings: Settings, tmp_path
):
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    cmd = c.Release(order_id="o1")

    def effect(tx):
        tx.execute("INSERT INTO counter VALUES ('o1', 1)")
        tx.emit("stock_released", "o1", {"order_id": "o1"}, order_id="o1")
        return c.Released(order_id="o1")

    async with Database(tmp_path / "k.db", "inventory", COUNTER) as db:
        relay = Relay(js, db, settings.stream_name)
        await relay.start()
        try:
            # No stream yet: the first request's event is committed but cannot be acknowledged.
            first = asyncio.create_task(db.run(once("k1", "inventory.release", request_hash(cmd), effect)))
            await wait_for(lambda: relay.failures >= 1, what="the first publish to be refused")
            repeat = asyncio.create_task(db.run(once("k1", "inventory.release", request_hash(cmd), effect)))
            # The repeat finds the stored reply at once, and still waits for the first request's event.
            await wait_for(lambda: db.units >= 2 and len(relay._waiters) == 2, what="the repeat to wait")
            assert not first.done() and not repeat.done()
            await ensure_stream(nc, js, settings)
            assert (await first).order_id == "o1"
            assert (await repeat)["order_id"] == "o1"
            assert relay.acked_seq >= 1
        finally:
            await relay.stop()
    await nc.close()


async def test_a_new_orders_saga_sends_nothing_before_its_creation_is_in_the_stream(stack, settings: Settings):
    from bus import subjects as s

    orders = stack["orders"]
    await stack["js"].delete_stream(settings.stream_name)  # the order's creation cannot be acknowledged
    placing = asyncio.create_task(
        stack["client"].call(s.ORDERS_PLACE, {"customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}]})
    )
    await wait_for(lambda: orders.relay.failures >= 1, what="the creation's publish to be refused")
    order_id = (await orders.db.read(lambda tx: tx.one("SELECT order_id FROM orders")))["order_id"]
    engine = orders.extras["engine"]
    saga = await orders.db.read(lambda tx: engine.view(tx, "saga_" + order_id.removeprefix("ord_")))
    assert [r.status for r in saga.steps] == ["RUNNING"]  # recorded, unsent
    reservations = await stack["client"].call(s.INVENTORY_RESERVATIONS, {})
    assert all(r["order_id"] != order_id for r in reservations["reservations"])  # nothing reserved for it
    await ensure_stream(stack["nc"], stack["js"], settings)
    assert (await placing)["status"] == "CONFIRMED"
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    for check in report.checks:  # deleting the stream took the catalog's restock events with it, and only those
        assert all(v.startswith("missing events.inventory.stock_restocked.") for v in check.violations), check
        assert check.number == 6 or not check.violations


async def test_a_started_service_answers_other_connections_at_once(settings: Settings):
    from bus import subjects as s
    from bus.client import Client
    from payment_svc.service import SPEC as PAYMENT

    nc = await nats.connect(settings.nats_url)
    client = Client(nc, timeout_s=5)
    for _ in range(40):  # without the readiness check, a few in a hundred found no responders here
        async with running(PAYMENT, settings, serve_metrics=False):
            assert "payments" in await client.call(s.PAYMENT_LIST, {})
    await nc.close()


async def test_a_service_process_freezes_its_start_out_of_the_collector_before_it_serves(settings: Settings):
    from bus import subjects as s
    from bus.client import Client
    from payment_svc.service import SPEC as PAYMENT

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    nc = await nats.connect(settings.nats_url)
    try:
        async with running(PAYMENT, settings, serve_metrics=False, freeze_gc=True):
            assert gc.get_threshold() == loop.GC_THRESHOLDS != before
            assert gc.get_freeze_count() > frozen
            # It serves as it did: the freeze happened before its endpoints existed.
            assert "payments" in await Client(nc, timeout_s=5).call(s.PAYMENT_LIST, {})
    finally:
        await nc.close()
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_the_audit_counts_the_stream_per_subject_as_the_server_holds_it(settings: Settings):
    from bus.audit import stream_subjects

    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_stream(nc, js, settings)
    expected = {f"events.inventory.stock_restocked.P{i}": 1 + i % 3 for i in range(120)}
    for subject, count in expected.items():
        for _ in range(count):
            await js.publish(subject, b"{}")
    assert await stream_subjects(js, settings.stream_name) == expected
    await nc.close()


async def test_the_durability_setting_syncs_every_commit_and_every_jetstream_write_or_neither(tmp_path):
    from bus import auth

    for durability, synchronous in (("fsync", 2), ("nosync", 1)):  # PRAGMA synchronous: FULL=2, NORMAL=1
        settings = Settings(home=tmp_path / durability, durability=durability)
        async with Database(tmp_path / f"{durability}.db", "test", COUNTER, fsync=durability == "fsync") as db:
            assert await db.read(lambda tx: tx.one("PRAGMA synchronous")[0]) == synchronous
            assert db._wconn is not None and db._wconn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        config = auth.prepare(settings).read_text()
        assert ("sync_interval: always" in config) == (durability == "fsync")
    assert Settings().durability == "fsync"  # the default a payments engineer would choose
    assert "sync_interval: always" in auth.deploy_config()


@pytest.mark.parametrize(
    ("key", "saga_id"),
    [
        ("saga_01a2426011d01ee87789742d:reserve_stock:invoke", "saga_01a2426011d01ee87789742d"),
        ("saga_01a2426011d01ee87789742d:refund_payment:compensate", "saga_01a2426011d01ee87789742d"),
        ("saga_01a2426011d01ee87789742d:reserve_stock:undo", None),
        ("saga_x:reserve_stock:invoke", None),
        ("saga_01a2426011d01ee87789742d:a:b:invoke", None),
        ("load-1", None),
        ("", None),
        (None, None),
    ],
)
def test_only_a_sagas_own_key_names_a_saga(key, saga_id):
    from bus.idempotency import saga_in_key

    assert saga_in_key(key) == saga_id
