"""Rebuilding the inventory tables from its events: products, reservations and their tombstones.

Stream order is commit order, so applying each event's change in turn gives
back the same counts; `products.reserved` moves only when a reservation changes
state. A copy of an event stored again later (after an outage longer than the
duplicate window) never gets here: the rebuild applies each event id once
(bus.replay). It has to: a copy of an older restock would set `on_hand` back.
The catalog is marked as seeded, so the first start after a rebuild does not
restock it a second time.

Of the idempotency table, only the restock keys are rebuilt (from the key and
hash each restock event carries): reserve and release are idempotent by order id,
which is what a resumed saga relies on when it re-sends a step, but a restock
repeated after a rebuild would add its units a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus import contract as c
from bus import idempotency, jsonb
from bus.contract import Event
from bus.subjects import INVENTORY_RESTOCK
from bus.unit import Tx
from inventory_svc import catalog, store


def apply(tx: Tx, event: Event) -> None:
    """Replay one inventory event; a rejected reservation changed nothing and is skipped."""
    project = PROJECTIONS.get(event.type)
    if project is not None:
        project(tx, event.data)


def _restocked(tx: Tx, d: dict[str, Any]) -> None:
    # The event carries on_hand after the restock: setting it (not adding qty) is exact and repeatable.
    tx.execute(
        "INSERT INTO products (sku, name, price_cents, on_hand, reserved) VALUES (?, ?, ?, ?, 0)"
        " ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,"
        " on_hand = excluded.on_hand",
        (d["sku"], d["name"], d["price_cents"], d["on_hand"]),
    )
    tx.execute("INSERT INTO meta (name, value) VALUES (?, 'replay') ON CONFLICT DO NOTHING", (catalog.SEEDED,))
    key, digest = d.get("idempotency_key"), d.get("request_hash")
    if key and digest:
        reserved = d.get("reserved", 0)
        answered = c.Product(
            sku=d["sku"],
            name=d["name"],
            price_cents=d["price_cents"],
            on_hand=d["on_hand"],
            reserved=reserved,
            available=d["on_hand"] - reserved,
        )
        idempotency.restore(tx, key, INVENTORY_RESTOCK.subject, digest, answered, d.get("restocked_at") or "")


def _reserved(tx: Tx, d: dict[str, Any]) -> None:
    inserted = tx.execute(
        "INSERT INTO reservations (order_id, status, items, total_cents, currency, created_at)"
        " VALUES (?, 'ACTIVE', ?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
        (d["order_id"], jsonb.text(d["items"]), d["total_cents"], d["currency"], d["created_at"]),
    )
    if inserted.rowcount == 0:
        return  # a repeat, or a reserve that lost to its release: the first event decided
    tx.executemany(
        "UPDATE products SET reserved = reserved + ? WHERE sku = ?", [(i["qty"], i["sku"]) for i in d["items"]]
    )


def _released(tx: Tx, d: dict[str, Any]) -> None:
    row = tx.one("SELECT status, items FROM reservations WHERE order_id = ?", (d["order_id"],))
    if row is not None and row["status"] == "RELEASED":
        return
    if row is None:
        # A tombstone (or a release whose reserve is no longer in the stream): it holds nothing.
        tx.execute(
            "INSERT INTO reservations (order_id, status, items, total_cents, currency, created_at,"
            " released_at, tombstone) VALUES (?, 'RELEASED', ?, ?, ?, ?, ?, ?)",
            (
                d["order_id"],
                jsonb.text(d["items"]),
                d["total_cents"],
                d["currency"],
                d["created_at"],
                d["released_at"],
                int(bool(d.get("tombstone"))),
            ),
        )
        return
    tx.execute(
        "UPDATE reservations SET status = 'RELEASED', released_at = ? WHERE order_id = ?",
        (d["released_at"], d["order_id"]),
    )
    tx.executemany(
        "UPDATE products SET reserved = reserved - ? WHERE sku = ?",
        [(i["qty"], i["sku"]) for i in jsonb.loads(row["items"])],
    )


PROJECTIONS: dict[str, Callable[[Tx, dict[str, Any]], None]] = {
    store.STOCK_RESTOCKED: _restocked,
    store.STOCK_RESERVED: _reserved,
    store.STOCK_RELEASED: _released,
}
