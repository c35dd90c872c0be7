"""Inventory endpoints: check, reserve, release, stock, restock and the reservations audit."""

from __future__ import annotations

from typing import Any

from bus import contract as c
from bus import subjects as s
from bus.app import Kernel, ServiceSpec
from bus.service import Call
from inventory_svc import catalog, replay, store

Reply = c.Result | dict[str, Any]  # a dict when an idempotency key replays its stored reply


async def build(k: Kernel) -> None:
    db, currency, metrics = k.db, k.settings.currency, k.metrics

    def show(levels: store.Levels) -> None:
        for sku, (on_hand, reserved) in levels.items():
            metrics.stock_on_hand.labels(sku).set(on_hand)
            metrics.stock_reserved.labels(sku).set(reserved)

    async def check(cmd: c.CheckStock, call: Call) -> c.Availability:
        """Read-only; raises NotFound."""
        return await db.read(lambda tx: store.check(tx, cmd))

    async def reserve(cmd: c.Reserve, call: Call) -> Reply:
        """All lines or none. Idempotent per order_id; raises NotFound, OutOfStock, Conflict, InvalidRequest."""
        levels: store.Levels = {}
        result = await db.write(call.once(cmd, lambda tx: store.reserve(tx, cmd, currency, levels)))
        show(levels)
        return result

    async def release(cmd: c.Release, call: Call) -> Reply:
        """Idempotent and order-tolerant: an unknown order gets a tombstone. Never raises a business error."""
        levels: store.Levels = {}
        result = await db.write(call.once(cmd, lambda tx: store.release(tx, cmd, currency, levels)))
        show(levels)
        return result

    async def stock(cmd: c.StockQuery, call: Call) -> c.Stock:
        """Read-only; raises NotFound for an unknown SKU."""
        return await db.read(lambda tx: store.stock(tx, cmd))

    async def restock(cmd: c.Restock, call: Call) -> Reply:
        """Adds units; raises InvalidRequest when a new SKU lacks its name or price."""
        levels: store.Levels = {}
        result = await db.write(
            call.once(cmd, lambda tx: store.restock(tx, cmd, levels, call.idempotency_key, call.request_hash))
        )
        show(levels)
        return result

    async def reservations(cmd: c.ReservationQuery, call: Call) -> c.ReservationList:
        """Read-only, for the audit."""
        return await db.read(lambda tx: store.reservations(tx, cmd))

    await db.write(lambda tx: catalog.seed(tx, {}), settle=False)  # answers nobody: no need to wait for the relay
    show(await db.read(store.all_levels))

    k.runner.add(s.INVENTORY_CHECK, check)
    k.runner.add(s.INVENTORY_RESERVE, reserve)
    k.runner.add(s.INVENTORY_RELEASE, release)
    k.runner.add(s.INVENTORY_STOCK, stock)
    k.runner.add(s.INVENTORY_RESTOCK, restock)
    k.runner.add(s.INVENTORY_RESERVATIONS, reservations)


SPEC = ServiceSpec(
    name="inventory",
    description="Catalog and stock; reserves and releases stock per order, never oversells",
    migrations=store.MIGRATIONS,
    build=build,
    apply=replay.apply,
)
