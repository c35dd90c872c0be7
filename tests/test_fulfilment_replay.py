"""Fulfilment's state rebuilt by replay and migrated from files made before it: payments captured, reversed and
refunded; reservations committed, uncommitted and returned; tombstones, refunds and returns tables included."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from bus import contract as c
from bus import subjects as s
from bus.app import ServiceSpec
from bus.db import KERNEL, Database
from bus.errors import Conflict
from bus.migrations import Migrations, Schema, migrate
from bus.replay import rebuild
from bus.settings import Settings
from inventory_svc import fulfilment, schema
from inventory_svc import store as inventory_store
from inventory_svc.service import SPEC as INVENTORY
from payment_svc import capture
from payment_svc import store as payment_store
from payment_svc.service import SPEC as PAYMENT
from tests.test_payment import auth
from tests.test_replay import Services, inventory_view, payment_view, tables

OWNED = {
    "payment": ("payments", "refunds", "capture_reversals"),
    "inventory": ("products", "reservations", "commit_reversals", "returns"),
}
VIEWS = {"payment": payment_view, "inventory": inventory_view}


@pytest.fixture
async def participants(settings: Settings) -> AsyncIterator[Services]:
    conn = await nats.connect(settings.nats_url)
    svc = Services(settings, conn)
    try:
        for spec in (INVENTORY, PAYMENT):
            await svc.start(spec)
        yield svc
    finally:
        await svc.close()
        await conn.close()


def lines(**qty: int) -> list[dict]:
    return [{"sku": sku.replace("_", "-"), "qty": n} for sku, n in qty.items()]


async def mixed_history(svc: Services) -> None:
    """Every kind of fulfilment change, tombstones and refusals among them."""
    call = svc.client.call
    # inventory: a product that is not resold, commits, an uncommit and a tombstone, returns of both kinds
    await call(s.INVENTORY_PRODUCT, {"sku": "HD-404", "resellable": False})
    await call(
        s.INVENTORY_RESTOCK, {"sku": "OPEN-1", "qty": 9, "name": "Open box", "price_cents": 700, "resellable": False}
    )
    for order_id, items in (("i-1", lines(KB_101=3, HD_404=2)), ("i-2", lines(MS_202=1)), ("i-3", lines(OPEN_1=2))):
        await call(s.INVENTORY_RESERVE, {"order_id": order_id, "items": items})
    for order_id in ("i-1", "i-2", "i-3"):
        await call(s.INVENTORY_COMMIT, {"order_id": order_id, "commit_id": f"{order_id}:ship"})
    await call(s.INVENTORY_UNCOMMIT, {"order_id": "i-2", "commit_id": "i-2:ship", "reason": "carrier lost it"})
    await call(s.INVENTORY_UNCOMMIT, {"order_id": "i-9", "commit_id": "i-9:ship"})  # a tombstone
    await call(
        s.INVENTORY_RECEIVE_RETURN, {"order_id": "i-1", "return_id": "ret-1", "items": lines(KB_101=1, HD_404=1)}
    )
    await call(s.INVENTORY_RECEIVE_RETURN, {"order_id": "i-1", "return_id": "ret-2", "items": lines(KB_101=2)})
    await call(s.INVENTORY_RECEIVE_RETURN, {"order_id": "i-3", "return_id": "ret-3", "items": lines(OPEN_1=1)})
    await call(s.INVENTORY_RESTOCK, {"sku": "KB-101", "qty": 4})
    with pytest.raises(Conflict):
        await call(s.INVENTORY_RECEIVE_RETURN, {"order_id": "i-1", "return_id": "ret-4", "items": lines(KB_101=1)})
    # payment: captures whole and partial, reversals of both kinds, refunds partial and whole, voids
    for order_id in ("p-1", "p-2", "p-3", "p-4", "p-5"):
        await call(s.PAYMENT_AUTHORIZE, auth(order_id, 10_000))
    await call(s.PAYMENT_CAPTURE, {"order_id": "p-1", "capture_id": "p-1:ship"})
    await call(s.PAYMENT_CAPTURE, {"order_id": "p-2", "capture_id": "p-2:ship", "amount_cents": 6_000})
    await call(s.PAYMENT_CAPTURE, {"order_id": "p-3", "capture_id": "p-3:ship"})
    await call(s.PAYMENT_REVERSE_CAPTURE, {"order_id": "p-3", "capture_id": "p-3:ship", "reason": "no carrier"})
    await call(s.PAYMENT_REVERSE_CAPTURE, {"order_id": "p-4", "capture_id": "p-4:ship"})  # overtakes its capture
    await call(s.PAYMENT_REVERSE_CAPTURE, {"order_id": "p-9", "capture_id": "p-9:ship"})  # unknown order
    await call(s.PAYMENT_REFUND, {"order_id": "p-1", "refund_id": "p-1:r1", "amount_cents": 2_500, "reason": "one"})
    await call(s.PAYMENT_REFUND, {"order_id": "p-1", "refund_id": "p-1:r2", "amount_cents": 7_500})
    await call(s.PAYMENT_REFUND, {"order_id": "p-2", "refund_id": "p-2:r1", "amount_cents": 1_000})
    await call(s.PAYMENT_VOID, {"order_id": "p-5", "reason": "cancelled"})
    await call(s.PAYMENT_REFUND, {"order_id": "p-8"})  # a void's tombstone


def owned(path: Path, service: str) -> dict[str, list[tuple]]:
    every = tables(path)
    return {name: every[name] for name in OWNED[service]}


@pytest.mark.parametrize("spec", [INVENTORY, PAYMENT], ids=lambda spec: spec.name)
async def test_a_rebuild_gives_back_every_fulfilment_table_row_for_row(participants, spec: ServiceSpec):
    await mixed_history(participants)
    shown = await VIEWS[spec.name](participants)
    await participants.stop(spec)
    path = participants.settings.db_path(spec.name)
    before = owned(path, spec.name)
    assert all(before[name] for name in OWNED[spec.name])  # the history reached every table
    participants.lose_database(spec)

    stats = await rebuild(participants.settings, spec, participants.js)

    assert stats.applied == stats.total > 0
    assert owned(path, spec.name) == before
    await participants.start(spec)
    assert await VIEWS[spec.name](participants) == shown


async def test_the_rebuilt_services_answer_repeats_as_before_and_keep_refusing_what_was_reversed(participants):
    await mixed_history(participants)
    call = participants.client.call
    refund = {"order_id": "p-2", "refund_id": "p-2:r1", "amount_cents": 1_000}
    refunded = await call(s.PAYMENT_REFUND, refund, c.Payment)
    returned = await call(
        s.INVENTORY_RECEIVE_RETURN, {"order_id": "i-3", "return_id": "ret-3", "items": lines(OPEN_1=1)}
    )
    for spec in (PAYMENT, INVENTORY):
        await participants.stop(spec)
        participants.lose_database(spec)
        await participants.start(spec, recover=True)

    assert await call(s.PAYMENT_REFUND, refund, c.Payment) == refunded
    assert (
        await call(s.INVENTORY_RECEIVE_RETURN, {"order_id": "i-3", "return_id": "ret-3", "items": lines(OPEN_1=1)})
        == returned
    )
    for late in (
        (s.PAYMENT_CAPTURE, {"order_id": "p-3", "capture_id": "p-3:ship"}),
        (s.PAYMENT_CAPTURE, {"order_id": "p-4", "capture_id": "p-4:ship"}),
        (s.INVENTORY_COMMIT, {"order_id": "i-2", "commit_id": "i-2:ship"}),
    ):
        with pytest.raises(Conflict, match="reversed; a late"):
            await call(*late)
    with pytest.raises(Conflict, match="more than the 5000 USD left"):
        await call(s.PAYMENT_REFUND, {"order_id": "p-2", "refund_id": "p-2:r2", "amount_cents": 5_001})
    with pytest.raises(Conflict, match="returning 2 of HD-404, but only 1 of it is left"):
        await call(s.INVENTORY_RECEIVE_RETURN, {"order_id": "i-1", "return_id": "ret-5", "items": lines(HD_404=2)})


# -- files made before fulfilment ----------------------------------------------------------


def first_version(path: Path, migrations: Migrations, rows: list[tuple[str, tuple]]) -> None:
    """A service's file as the release before fulfilment made it (its owner's first migration), with rows."""
    conn = sqlite3.connect(path)
    try:
        migrate(conn, KERNEL, Schema(Migrations(migrations.owner, migrations.scripts[:1])), migrations.owner)
        for sql, params in rows:
            conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


OLD_PAYMENT = (
    "INSERT INTO payments (order_id, customer_id, amount_cents, currency, method, status, decline_reason,"
    " created_at, updated_at) VALUES (?, ?, ?, 'USD', ?, ?, ?, 't0', 't1')"
)


async def test_a_payment_file_from_before_fulfilment_migrates_and_captures(tmp_path: Path):
    path = tmp_path / "payment.db"
    first_version(
        path,
        payment_store.MIGRATIONS,
        [
            (OLD_PAYMENT, ("a-1", "c1", 500, "card", "AUTHORIZED", None)),
            (OLD_PAYMENT, ("a-2", "c1", 700, "card", "REFUNDED", None)),  # an authorization given back, before
            (OLD_PAYMENT, ("a-3", None, 0, None, "VOIDED", None)),
            (OLD_PAYMENT, ("a-4", "c1", 900, "card_declined", "DECLINED", "card_declined")),
        ],
    )
    async with Database(path, "payment", PAYMENT.schema) as db:
        listed = await db.read(lambda tx: payment_store.payments(tx, c.PaymentQuery()))
        assert [(p.order_id, p.status, p.captured_cents, p.refunded_cents, p.capture_id) for p in listed.payments] == [
            ("a-1", "AUTHORIZED", 0, 0, None),
            ("a-2", "REFUNDED", 0, 0, None),
            ("a-3", "VOIDED", 0, 0, None),
            ("a-4", "DECLINED", 0, 0, None),
        ]
        taken = await db.run(lambda tx: capture.capture(tx, c.Capture(order_id="a-1", capture_id="x")))
        assert (taken.status, taken.captured_cents) == ("CAPTURED", 500)
        with pytest.raises(Conflict, match="is refunded"):
            await db.run(lambda tx: capture.capture(tx, c.Capture(order_id="a-2", capture_id="x")))
        again = await db.run(lambda tx: payment_store.void(tx, c.Void(order_id="a-2"), "USD"))
        assert again.status == "REFUNDED"  # answered as it is
        versions = await db.read(lambda tx: dict(tx.all("SELECT owner, version FROM schema_versions")))
        assert versions["payment"] == len(payment_store.MIGRATIONS.scripts) == 2


OLD_PRODUCT = "INSERT INTO products (sku, name, price_cents, on_hand, reserved) VALUES (?, ?, 100, ?, ?)"
OLD_RESERVATION = (
    "INSERT INTO reservations (order_id, status, items, total_cents, currency, created_at, released_at, tombstone)"
    " VALUES (?, ?, ?, 100, 'USD', 't0', ?, ?)"
)


async def test_an_inventory_file_from_before_fulfilment_migrates_and_commits(tmp_path: Path):
    path = tmp_path / "inventory.db"
    line = '[{"sku":"A-1","qty":1,"unit_price_cents":100}]'
    first_version(
        path,
        schema.MIGRATIONS,
        [
            (OLD_PRODUCT, ("A-1", "Thing", 5, 1)),
            (OLD_RESERVATION, ("o-1", "ACTIVE", line, None, 0)),
            (OLD_RESERVATION, ("o-2", "RELEASED", "[]", "t1", 1)),
        ],
    )
    async with Database(path, "inventory", INVENTORY.schema) as db:
        listed = await db.read(lambda tx: inventory_store.reservations(tx, c.ReservationQuery()))
        assert [
            (r.order_id, r.status, r.commit_id, [i.returned_qty for i in r.items]) for r in listed.reservations
        ] == [
            ("o-1", "ACTIVE", None, [0]),
            ("o-2", "RELEASED", None, []),
        ]
        stock = await db.read(lambda tx: inventory_store.stock(tx, c.StockQuery()))
        assert [(p.sku, p.on_hand, p.reserved, p.resellable) for p in stock.products] == [("A-1", 5, 1, True)]
        shipped = await db.run(lambda tx: fulfilment.commit(tx, c.Commit(order_id="o-1", commit_id="x")))
        assert shipped.status == "COMMITTED"
        stock = await db.read(lambda tx: inventory_store.stock(tx, c.StockQuery()))
        assert [(p.on_hand, p.reserved) for p in stock.products] == [(4, 0)]
        versions = await db.read(lambda tx: dict(tx.all("SELECT owner, version FROM schema_versions")))
        assert versions["inventory"] == len(schema.MIGRATIONS.scripts) == 2
