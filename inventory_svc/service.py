"""Inventory endpoints: check, reserve, release, commit and uncommit, returns, stock, restock, product updates
and the reservations audit."""

from __future__ import annotations

from bus import contract as c
from bus import subjects as s
from bus.db import Acked
from bus.migrations import Schema
from bus.service import Call
from bus.spec import Kernel, ServiceSpec
from inventory_svc import catalog, fulfilment, replay, returns, schema, store


async def build(k: Kernel) -> None:
    db, currency, metrics = k.db, k.settings.currency, k.metrics

    def show(levels: store.Levels) -> None:
        for sku, (on_hand, reserved) in levels.items():
            metrics.stock_on_hand.labels(sku).set(on_hand)
            metrics.stock_reserved.labels(sku).set(reserved)

    async def check(cmd: c.CheckStock, call: Call) -> c.Availability:
        """Read-only; raises NotFound."""
        return await db.read(lambda tx: store.check(tx, cmd))

    async def reserve(cmd: c.Reserve, call: Call) -> c.Reservation:
        """All lines or none. Idempotent per order_id; raises NotFound, OutOfStock, Conflict, InvalidRequest."""
        return await db.run(call.once(cmd, lambda tx: store.reserve(tx, cmd, currency, show)))

    async def release(cmd: c.Release, call: Call) -> c.Released:
        """Idempotent and order-tolerant: an unknown order gets a tombstone. Never raises a business error."""
        return await db.run(call.once(cmd, lambda tx: store.release(tx, cmd, currency, show)))

    async def stock(cmd: c.StockQuery, call: Call) -> c.Stock:
        """Read-only; raises NotFound for an unknown SKU."""
        return await db.read(lambda tx: store.stock(tx, cmd))

    async def restock(cmd: c.Restock, call: Call) -> c.Product:
        """Adds units; raises InvalidRequest when a new SKU lacks its name or price."""
        # `resellable` came later: left out of the hash while unset, a key stored before is the same request.
        exclude = frozenset({"resellable"}) if cmd.resellable is None else frozenset()
        return await db.run(
            call.once(cmd, lambda tx: store.restock(tx, cmd, show, call.idempotency_key, call.request_hash), exclude)
        )

    async def product(cmd: c.UpdateProduct, call: Call) -> c.Product:
        """Changes a product's name, price or resellable flag, not its stock; raises NotFound."""
        return await db.run(call.once(cmd, lambda tx: store.update_product(tx, cmd)))

    async def commit(cmd: c.Commit, call: Call) -> c.Reservation:
        """Idempotent per commit_id; raises NotFound and Conflict."""
        return await db.run(call.once(cmd, lambda tx: fulfilment.commit(tx, cmd, show)))

    async def uncommit(cmd: c.Uncommit, call: Call) -> c.Uncommitted:
        """Idempotent and order-tolerant (a tombstone refuses a late commit); raises Conflict once returned."""
        return await db.run(call.once(cmd, lambda tx: fulfilment.uncommit(tx, cmd, show)))

    async def receive_return(cmd: c.ReceiveReturn, call: Call) -> c.ReturnReceipt:
        """All lines or none, never past what was committed. Idempotent per return_id; raises NotFound,
        InvalidRequest, Conflict."""
        return await db.run(call.once(cmd, lambda tx: returns.receive_return(tx, cmd, show)))

    async def reservations(cmd: c.ReservationQuery, call: Call) -> c.ReservationList:
        """Read-only, for the audit."""
        return await db.read(lambda tx: store.reservations(tx, cmd))

    await db.run(catalog.seed, wait=Acked.OWN)  # answers nobody: its own events suffice
    show(await db.read(store.all_levels))
    k.runner.add_all(
        (s.INVENTORY_CHECK, check),
        (s.INVENTORY_RESERVE, reserve),
        (s.INVENTORY_RELEASE, release),
        (s.INVENTORY_STOCK, stock),
        (s.INVENTORY_RESTOCK, restock),
        (s.INVENTORY_RESERVATIONS, reservations),
        (s.INVENTORY_PRODUCT, product),
        (s.INVENTORY_COMMIT, commit),
        (s.INVENTORY_UNCOMMIT, uncommit),
        (s.INVENTORY_RECEIVE_RETURN, receive_return),
    )


SPEC = ServiceSpec(
    name="inventory",
    description="Catalog and stock; reserves, releases, commits and takes back stock per order, never oversells",
    schema=Schema(schema.MIGRATIONS),
    build=build,
    apply=replay.apply,
)
