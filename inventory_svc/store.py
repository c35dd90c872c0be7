"""Inventory storage: the schema and the units of work that move stock, each with its event."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from bus import contract as c
from bus import jsonb
from bus.errors import Conflict, InvalidRequest, NotFound, OutOfStock
from bus.ids import now_iso
from bus.money import MONEY_LIMIT_CENTS
from bus.unit import Rejected, Tx, in_window, where

# Event types this service emits (subject `events.inventory.<type>.<key>`).
STOCK_RESTOCKED = "stock_restocked"  # key: sku
STOCK_RESERVED = "stock_reserved"  # key: order id
STOCK_RELEASED = "stock_released"  # key: order id
RESERVATION_REJECTED = "reservation_rejected"  # key: order id
PRODUCT_UPDATED = "product_updated"  # key: sku
STOCK_COMMITTED = "stock_committed"  # key: order id
STOCK_UNCOMMITTED = "stock_uncommitted"  # key: order id
STOCK_RETURNED = "stock_returned"  # key: order id

# What a unit changed, sku -> (on_hand, reserved), shown (the stock gauges) once it has committed.
Levels = dict[str, tuple[int, int]]
Show = Callable[[Levels], None]


def show_after_commit(tx: Tx, show: Show | None, levels: Levels) -> None:
    if show is not None and levels:
        tx.after_commit(lambda: show(levels))


# -- commands -------------------------------------------------------------


def reserve(tx: Tx, cmd: c.Reserve, currency: str, show: Show | None = None) -> c.Reservation | Rejected:
    """All lines or none. Idempotent per order_id; refuses a reserve after a release, and lines whose total
    is above the money limit (VALIDATION_ERROR)."""
    wanted = {line.sku: line.qty for line in cmd.items}
    row = tx.one("SELECT * FROM reservations WHERE order_id = ?", (cmd.order_id,))
    if row is not None:
        if row["status"] == "RELEASED":
            raise Conflict(
                f"order {cmd.order_id} was released; a late reserve is refused",
                {"order_id": cmd.order_id, "tombstone": bool(row["tombstone"])},
            )
        held = {item["sku"]: item["qty"] for item in jsonb.loads(row["items"])}
        if held != wanted:
            raise Conflict(
                f"order {cmd.order_id} already holds a reservation for different items",
                {"order_id": cmd.order_id, "items": [{"sku": s, "qty": q} for s, q in held.items()]},
            )
        return reservation_of(row)

    products = products_of(tx, list(wanted))
    total = sum(qty * products[sku]["price_cents"] for sku, qty in wanted.items())
    if total > MONEY_LIMIT_CENTS:
        # No payment could take this total: refused here, where prices meet quantities, before anything is
        # held or charged. Rejected, not raised: the rejection event says why in the order's timeline.
        rejected = {
            "order_id": cmd.order_id,
            "reason": "total_over_limit",
            "total_cents": total,
            "currency": currency,
            "limit_cents": MONEY_LIMIT_CENTS,
        }
        tx.emit(RESERVATION_REJECTED, cmd.order_id, rejected, order_id=cmd.order_id)
        return Rejected(
            InvalidRequest(
                f"invalid request: items: their total at the current prices, {total} cents, is above the money"
                f" limit of {MONEY_LIMIT_CENTS} cents",
                {"field": "items", "total_cents": total, "limit_cents": MONEY_LIMIT_CENTS},
            )
        )
    short = [
        {"sku": sku, "requested": qty, "available": products[sku]["on_hand"] - products[sku]["reserved"]}
        for sku, qty in wanted.items()
        if qty > products[sku]["on_hand"] - products[sku]["reserved"]
    ]
    if short:
        # Rejected, not raised: the rejection event is kept while nothing is reserved.
        tx.emit(RESERVATION_REJECTED, cmd.order_id, {"order_id": cmd.order_id, "lines": short}, order_id=cmd.order_id)
        first = short[0]
        more = f" (and {len(short) - 1} more lines)" if len(short) > 1 else ""
        return Rejected(
            OutOfStock(
                f"not enough {first['sku']}: requested {first['requested']}, available {first['available']}{more}",
                {"lines": short},
            )
        )

    tx.executemany(
        "UPDATE products SET reserved = reserved + ? WHERE sku = ?", [(qty, sku) for sku, qty in wanted.items()]
    )
    items = [{"sku": sku, "qty": qty, "unit_price_cents": products[sku]["price_cents"]} for sku, qty in wanted.items()]
    now = now_iso()
    tx.execute(
        "INSERT INTO reservations (order_id, status, items, total_cents, currency, created_at)"
        " VALUES (?, 'ACTIVE', ?, ?, ?, ?)",
        (cmd.order_id, jsonb.text(items), total, currency, now),
    )
    data = {
        "order_id": cmd.order_id,
        "status": "ACTIVE",
        "items": items,
        "total_cents": total,
        "currency": currency,
        "created_at": now,
    }
    tx.emit(STOCK_RESERVED, cmd.order_id, data, order_id=cmd.order_id)
    levels = {sku: (products[sku]["on_hand"], products[sku]["reserved"] + qty) for sku, qty in wanted.items()}
    show_after_commit(tx, show, levels)
    return c.Reservation.model_validate(data)


def release(tx: Tx, cmd: c.Release, currency: str, show: Show | None = None) -> c.Released:
    """Give the order's stock back; for an unknown order leave a tombstone. Idempotent; raises Conflict for a
    committed (shipped) reservation, whose units left with the order."""
    row = tx.one("SELECT * FROM reservations WHERE order_id = ?", (cmd.order_id,))
    if row is not None and row["status"] == "RELEASED":
        return c.Released(order_id=cmd.order_id, tombstone=bool(row["tombstone"]))
    if row is not None and row["status"] == "COMMITTED":
        raise Conflict(
            f"order {cmd.order_id} is committed (shipped): its stock is not released; uncommit it or return it",
            {"order_id": cmd.order_id, "status": "COMMITTED", "commit_id": row["commit_id"]},
        )
    now = now_iso()
    if row is None:
        # The release overtook (or replaced) the reserve: remember it, so a late reserve is refused.
        tx.execute(
            "INSERT INTO reservations (order_id, status, items, total_cents, currency, created_at,"
            " released_at, tombstone) VALUES (?, 'RELEASED', '[]', 0, ?, ?, ?, 1)",
            (cmd.order_id, currency, now, now),
        )
        data: dict[str, Any] = {
            "order_id": cmd.order_id,
            "status": "RELEASED",
            "items": [],
            "total_cents": 0,
            "currency": currency,
            "created_at": now,
            "released_at": now,
            "tombstone": True,
            "reason": cmd.reason,
        }
        tx.emit(STOCK_RELEASED, cmd.order_id, data, order_id=cmd.order_id)
        return c.Released(order_id=cmd.order_id, tombstone=True)

    items = jsonb.loads(row["items"])
    tx.executemany("UPDATE products SET reserved = reserved - ? WHERE sku = ?", [(i["qty"], i["sku"]) for i in items])
    tx.execute("UPDATE reservations SET status = 'RELEASED', released_at = ? WHERE order_id = ?", (now, cmd.order_id))
    data = {
        **reservation_of(row).model_dump(mode="json"),
        "items": items,  # as reserved (nothing of an ACTIVE reservation was returned)
        "status": "RELEASED",
        "released_at": now,
        "tombstone": False,
        "reason": cmd.reason,
    }
    tx.emit(STOCK_RELEASED, cmd.order_id, data, order_id=cmd.order_id)
    show_after_commit(tx, show, levels_of(tx, [i["sku"] for i in items]))
    return c.Released(order_id=cmd.order_id, tombstone=False)


def restock(
    tx: Tx, cmd: c.Restock, show: Show | None = None, key: str | None = None, digest: str | None = None
) -> c.Product:
    """Add units to a SKU; a new SKU needs its name and price, an existing one may change them.

    Restocking is not idempotent by nature (unlike reserve and release): the event carries the request's
    idempotency key and hash, so that a rebuild by replay keeps answering a repeat instead of adding again."""
    row = tx.one("SELECT sku FROM products WHERE sku = ?", (cmd.sku,))
    if row is None:
        for field in ("name", "price_cents"):
            if getattr(cmd, field) is None:
                raise InvalidRequest(f"{cmd.sku} is a new SKU: {field} is required", {"field": field})
        tx.execute(
            "INSERT INTO products (sku, name, price_cents, on_hand, reserved, resellable, restocked_units)"
            " VALUES (?, ?, ?, ?, 0, ?, ?)",
            (cmd.sku, cmd.name, cmd.price_cents, cmd.qty, int(cmd.resellable is not False), cmd.qty),
        )
    else:
        tx.execute(
            "UPDATE products SET on_hand = on_hand + ?, restocked_units = restocked_units + ?,"
            " name = coalesce(?, name), price_cents = coalesce(?, price_cents), resellable = coalesce(?, resellable)"
            " WHERE sku = ?",
            (
                cmd.qty,
                cmd.qty,
                cmd.name,
                cmd.price_cents,
                None if cmd.resellable is None else int(cmd.resellable),
                cmd.sku,
            ),
        )
    product = _product(products_of(tx, [cmd.sku])[cmd.sku])
    data: dict[str, Any] = {
        "sku": product.sku,
        "name": product.name,
        "price_cents": product.price_cents,
        "qty": cmd.qty,
        "on_hand": product.on_hand,
        "reserved": product.reserved,
        "restocked_units": product.restocked_units,
        "restocked_at": now_iso(),
    }
    if cmd.resellable is not None:  # (only then: a restock's event is as it was before the flag)
        data["resellable"] = product.resellable
    if key is not None and digest is not None:
        data |= {"idempotency_key": key, "request_hash": digest}
    tx.emit(STOCK_RESTOCKED, cmd.sku, data)
    show_after_commit(tx, show, {product.sku: (product.on_hand, product.reserved)})
    return product


def update_product(tx: Tx, cmd: c.UpdateProduct) -> c.Product:
    """Change a product's name, price or whether returned units are resold; its stock stays. Raises NotFound."""
    products_of(tx, [cmd.sku])
    resellable = None if cmd.resellable is None else int(cmd.resellable)
    tx.execute(
        "UPDATE products SET name = coalesce(?, name), price_cents = coalesce(?, price_cents),"
        " resellable = coalesce(?, resellable) WHERE sku = ?",
        (cmd.name, cmd.price_cents, resellable, cmd.sku),
    )
    product = _product(products_of(tx, [cmd.sku])[cmd.sku])
    tx.emit(PRODUCT_UPDATED, cmd.sku, product.model_dump(mode="json") | {"updated_at": now_iso()})
    return product


# -- queries --------------------------------------------------------------


def check(tx: Tx, cmd: c.CheckStock) -> c.Availability:
    """Would these lines fit right now? Read-only; raises NotFound for an unknown SKU."""
    products = products_of(tx, [line.sku for line in cmd.items])
    lines = [
        c.CheckLine(
            sku=line.sku,
            requested=line.qty,
            available=products[line.sku]["on_hand"] - products[line.sku]["reserved"],
        )
        for line in cmd.items
    ]
    return c.Availability(available=all(line.requested <= line.available for line in lines), lines=lines)


def stock(tx: Tx, cmd: c.StockQuery) -> c.Stock:
    if cmd.sku is not None:
        return c.Stock(products=[_product(products_of(tx, [cmd.sku])[cmd.sku])])
    return c.Stock(products=[_product(row) for row in tx.all("SELECT * FROM products ORDER BY sku")])


def reservations(tx: Tx, cmd: c.ReservationQuery) -> c.ReservationList:
    """One page by order id (`cmd.order`), within the cursors and the window of `created_at`; tombstones are
    included (RELEASED, no items). The window filters the walk of the primary key (no index: see
    `payment_svc.store.payments`)."""
    clause, params = where(
        ("order_id = ?", cmd.order_id),
        ("status = ?", cmd.status),
        *in_window(cmd, "order_id", created="created_at"),
    )
    direction = "DESC" if cmd.order == "desc" else "ASC"
    rows = tx.all(f"SELECT * FROM reservations{clause} ORDER BY order_id {direction} LIMIT ?", (*params, cmd.limit))
    return c.ReservationList(reservations=[reservation_of(row) for row in rows])


def all_levels(tx: Tx) -> Levels:
    return {row["sku"]: (row["on_hand"], row["reserved"]) for row in tx.all("SELECT * FROM products")}


# -- rows -----------------------------------------------------------------


def products_of(tx: Tx, skus: list[str]) -> dict[str, sqlite3.Row]:
    """The rows for these SKUs; raises NotFound naming the first unknown one."""
    marks = ",".join("?" * len(skus))
    rows = {row["sku"]: row for row in tx.all(f"SELECT * FROM products WHERE sku IN ({marks})", skus)}
    for sku in skus:
        if sku not in rows:
            raise NotFound(f"unknown SKU {sku}", {"sku": sku})
    return rows


def levels_of(tx: Tx, skus: list[str]) -> Levels:
    return {sku: (row["on_hand"], row["reserved"]) for sku, row in products_of(tx, skus).items()}


def _product(row: sqlite3.Row) -> c.Product:
    return c.Product(
        sku=row["sku"],
        name=row["name"],
        price_cents=row["price_cents"],
        on_hand=row["on_hand"],
        reserved=row["reserved"],
        available=row["on_hand"] - row["reserved"],
        resellable=bool(row["resellable"]),
        restocked_units=row["restocked_units"],
    )


def reservation_of(row: sqlite3.Row) -> c.Reservation:
    return c.Reservation(
        order_id=row["order_id"],
        status=row["status"],
        items=[c.ReservedLine.model_validate(item) for item in jsonb.loads(row["items"])],
        total_cents=row["total_cents"],
        currency=row["currency"],
        created_at=row["created_at"],
        released_at=row["released_at"],
        commit_id=row["commit_id"],
        committed_at=row["committed_at"],
    )
