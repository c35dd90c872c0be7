"""Shipping a reservation (commit) and its compensation (uncommit), each with its event.

A commit is named by its caller's `commit_id`: a repeat of it answers the reservation it committed. Its
undo is idempotent and order-tolerant, as every compensation is (DESIGN decision 6): one that overtakes its
commit leaves a tombstone in `commit_reversals`, and a late commit with that id is refused. A reversed commit
id is never taken again, also after a commit it undid.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from bus import contract as c
from bus import jsonb
from bus.errors import Conflict, NotFound
from bus.ids import now_iso
from bus.unit import Tx
from inventory_svc import store


def commit(tx: Tx, cmd: c.Commit, show: store.Show | None = None) -> c.Reservation:
    """ACTIVE -> COMMITTED: each line's units leave on_hand and reserved (available stays). Idempotent per
    commit_id; raises NotFound, Conflict (committed by another id, reversed, released)."""
    row = tx.one("SELECT * FROM reservations WHERE order_id = ?", (cmd.order_id,))
    if row is None:
        raise NotFound(f"no reservation for order {cmd.order_id}", {"order_id": cmd.order_id})
    if row["commit_id"] == cmd.commit_id:
        return store.reservation_of(row)
    refused = {"order_id": cmd.order_id, "commit_id": cmd.commit_id, "status": row["status"]}
    if reversal(tx, cmd.order_id, cmd.commit_id) is not None:
        raise Conflict(
            f"commit {cmd.commit_id} of order {cmd.order_id} was reversed; a late commit is refused", refused
        )
    if row["status"] != "ACTIVE":
        what = f"committed by {row['commit_id']}" if row["commit_id"] else row["status"].lower()
        raise Conflict(f"reservation of order {cmd.order_id} is {what}; only an active one is committed", refused)
    items = jsonb.loads(row["items"])
    move(tx, items, -1)
    now = now_iso()
    tx.execute(
        "UPDATE reservations SET status = 'COMMITTED', commit_id = ?, committed_at = ? WHERE order_id = ?",
        (cmd.commit_id, now, cmd.order_id),
    )
    reservation = store.reservation_of(_row(tx, cmd.order_id))
    tx.emit(store.STOCK_COMMITTED, cmd.order_id, reservation.model_dump(mode="json"), order_id=cmd.order_id)
    store.show_after_commit(tx, show, store.levels_of(tx, [i["sku"] for i in items]))
    return reservation


def uncommit(tx: Tx, cmd: c.Uncommit, show: store.Show | None = None) -> c.Uncommitted:
    """Undo the commit `commit_id` if it happened (COMMITTED -> ACTIVE: the units are on hand and reserved
    again), or leave a tombstone refusing it later. Idempotent and order-tolerant; raises Conflict once
    units of the order were returned."""
    done = reversal(tx, cmd.order_id, cmd.commit_id)
    row = tx.one("SELECT * FROM reservations WHERE order_id = ?", (cmd.order_id,))
    if done is not None:
        return _answer(cmd, bool(done["tombstone"]), row)
    tombstone = row is None or row["commit_id"] != cmd.commit_id
    if not tombstone:
        assert row is not None
        items = jsonb.loads(row["items"])
        if any(item.get("returned_qty") for item in items):
            returned = {i["sku"]: i["returned_qty"] for i in items if i.get("returned_qty")}
            raise Conflict(
                f"commit {cmd.commit_id} of order {cmd.order_id} has units returned already; it is not undone",
                {"order_id": cmd.order_id, "commit_id": cmd.commit_id, "returned": returned},
            )
        move(tx, items, +1)
        tx.execute(
            "UPDATE reservations SET status = 'ACTIVE', commit_id = NULL, committed_at = NULL WHERE order_id = ?",
            (cmd.order_id,),
        )
        row = _row(tx, cmd.order_id)
        store.show_after_commit(tx, show, store.levels_of(tx, [i["sku"] for i in items]))
    now = now_iso()
    tx.execute(
        "INSERT INTO commit_reversals (order_id, commit_id, tombstone, reason, reversed_at) VALUES (?, ?, ?, ?, ?)",
        (cmd.order_id, cmd.commit_id, int(tombstone), cmd.reason, now),
    )
    answer = _answer(cmd, tombstone, row)
    data: dict[str, Any] = answer.model_dump(mode="json") | {"reason": cmd.reason, "reversed_at": now}
    tx.emit(store.STOCK_UNCOMMITTED, cmd.order_id, data, order_id=cmd.order_id)
    return answer


def move(tx: Tx, items: list[dict[str, Any]], sign: int) -> None:
    """A commit's units out of on_hand and reserved (sign -1), or back into both (+1)."""
    tx.executemany(
        "UPDATE products SET on_hand = on_hand + ?, reserved = reserved + ? WHERE sku = ?",
        [(sign * i["qty"], sign * i["qty"], i["sku"]) for i in items],
    )


def reversal(tx: Tx, order_id: str, commit_id: str) -> sqlite3.Row | None:
    return tx.one(
        "SELECT tombstone, reversed_at FROM commit_reversals WHERE order_id = ? AND commit_id = ?",
        (order_id, commit_id),
    )


def _row(tx: Tx, order_id: str) -> sqlite3.Row:
    row = tx.one("SELECT * FROM reservations WHERE order_id = ?", (order_id,))
    assert row is not None
    return row


def _answer(cmd: c.Uncommit, tombstone: bool, row: sqlite3.Row | None) -> c.Uncommitted:
    reservation = None if row is None else store.reservation_of(row)
    return c.Uncommitted(order_id=cmd.order_id, commit_id=cmd.commit_id, tombstone=tombstone, reservation=reservation)
