"""Rebuilding the inventory tables from its events: products, reservations and their tombstones, commits and
their reversals, returns.

Stream order is commit order, so applying each event's change in turn gives
back the same counts; `products.reserved` moves only when a reservation changes
state. A copy of an event stored again later (after an outage longer than the
duplicate window) never gets here: the rebuild applies each event id once
(bus.replay). It has to: a copy of an older restock would set `on_hand` back.
The catalog is marked as seeded, so the first start after a rebuild does not
restock it a second time. A commit moves its lines out of `on_hand` and `reserved`, an uncommit back in, a
return puts its restocked lines back on hand and counts each line's returned units, with the same
statements the service ran (inventory_svc.fulfilment, inventory_svc.returns).

Of the idempotency table, only the restock keys are rebuilt (from the key and
hash each restock event carries): reserve and release are idempotent by order id,
commit and uncommit by commit id, returns by return id, which is what a resumed saga relies on when it
re-sends a step, but a restock
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
from inventory_svc import catalog, fulfilment, returns, store


def apply(tx: Tx, event: Event) -> None:
    """Replay one inventory event; a rejected reservation changed nothing and is skipped."""
    project = PROJECTIONS.get(event.type)
    if project is not None:
        project(tx, event.data)


def _restocked(tx: Tx, d: dict[str, Any]) -> None:
    # The event carries on_hand after the restock: setting it (not adding qty) is exact and repeatable.
    # Events from before fulfilment carry no restocked_units: on_hand then moved by restocks alone.
    tx.execute(
        "INSERT INTO products (sku, name, price_cents, on_hand, reserved, restocked_units) VALUES (?, ?, ?, ?, 0, ?)"
        " ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,"
        " on_hand = excluded.on_hand, restocked_units = excluded.restocked_units",
        (d["sku"], d["name"], d["price_cents"], d["on_hand"], d.get("restocked_units", d["on_hand"])),
    )
    if "resellable" in d:  # (a restock that did not set the flag does not name it)
        tx.execute("UPDATE products SET resellable = ? WHERE sku = ?", (int(d["resellable"]), d["sku"]))
    tx.execute("INSERT INTO meta (name, value) VALUES (?, 'replay') ON CONFLICT DO NOTHING", (catalog.SEEDED,))
    key, digest = d.get("idempotency_key"), d.get("request_hash")
    if key and digest:
        reserved = d.get("reserved", 0)
        flag = tx.one("SELECT resellable FROM products WHERE sku = ?", (d["sku"],))
        answered = c.Product(
            sku=d["sku"],
            name=d["name"],
            price_cents=d["price_cents"],
            on_hand=d["on_hand"],
            reserved=reserved,
            available=d["on_hand"] - reserved,
            resellable=bool(flag["resellable"]) if flag else True,
            restocked_units=d.get("restocked_units", d["on_hand"]),
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


def _product_updated(tx: Tx, d: dict[str, Any]) -> None:
    tx.execute(
        "UPDATE products SET name = ?, price_cents = ?, resellable = ? WHERE sku = ?",
        (d["name"], d["price_cents"], int(d["resellable"]), d["sku"]),
    )


# A commit's and an uncommit's events carry the reservation's lines: the stock moves by them.


def _committed(tx: Tx, d: dict[str, Any]) -> None:
    fulfilment.move(tx, d["items"], -1)
    tx.execute(
        "UPDATE reservations SET status = 'COMMITTED', commit_id = ?, committed_at = ? WHERE order_id = ?",
        (d["commit_id"], d["committed_at"], d["order_id"]),
    )


def _uncommitted(tx: Tx, d: dict[str, Any]) -> None:
    if not d["tombstone"]:
        fulfilment.move(tx, d["reservation"]["items"], +1)
        tx.execute(
            "UPDATE reservations SET status = 'ACTIVE', commit_id = NULL, committed_at = NULL WHERE order_id = ?",
            (d["order_id"],),
        )
    tx.execute(
        "INSERT INTO commit_reversals (order_id, commit_id, tombstone, reason, reversed_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (d["order_id"], d["commit_id"], int(d["tombstone"]), d.get("reason"), d["reversed_at"]),
    )


def _returned(tx: Tx, d: dict[str, Any]) -> None:
    row = tx.one("SELECT items FROM reservations WHERE order_id = ?", (d["order_id"],))
    items = jsonb.loads(row["items"]) if row is not None else []  # (none: a reservation the stream lost)
    returns.record(tx, c.ReturnReceipt.model_validate(d), items)


PROJECTIONS: dict[str, Callable[[Tx, dict[str, Any]], None]] = {
    store.STOCK_RESTOCKED: _restocked,
    store.STOCK_RESERVED: _reserved,
    store.STOCK_RELEASED: _released,
    store.PRODUCT_UPDATED: _product_updated,
    store.STOCK_COMMITTED: _committed,
    store.STOCK_UNCOMMITTED: _uncommitted,
    store.STOCK_RETURNED: _returned,
}
