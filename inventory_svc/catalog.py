"""The demo catalog, seeded on first start through the restock unit so every SKU has its event."""

from __future__ import annotations

from typing import NamedTuple

from bus import contract as c
from bus.unit import Tx
from inventory_svc import store


class CatalogItem(NamedTuple):
    sku: str
    name: str
    price_cents: int
    on_hand: int


CATALOG: tuple[CatalogItem, ...] = (
    CatalogItem("KB-101", "Mechanical keyboard", 8900, 100),
    CatalogItem("MS-202", "Wireless mouse", 2900, 100),
    CatalogItem("MN-303", "27in monitor", 32900, 50),
    CatalogItem("HD-404", "Noise-cancelling headphones", 19900, 60),
    CatalogItem("CB-505", "USB-C cable", 1200, 500),
    CatalogItem("DK-606", "Docking station", 15900, 40),
    CatalogItem("WC-707", "HD webcam", 6900, 80),
    CatalogItem("LAMP-1", "Desk lamp", 4500, 3),  # scarce on purpose: out-of-stock demos
)

SEEDED = "catalog_seeded"


def seed(tx: Tx, show: store.Show | None = None) -> int:
    """Restock the demo catalog into an empty database, once; returns how many SKUs it added.

    A rebuild by replay must load the events before this runs, or the seed is counted twice.
    """
    if tx.one("SELECT 1 FROM meta WHERE name = ?", (SEEDED,)) or tx.one("SELECT 1 FROM products LIMIT 1"):
        return 0
    for item in CATALOG:
        cmd = c.Restock(sku=item.sku, qty=item.on_hand, name=item.name, price_cents=item.price_cents)
        store.restock(tx, cmd, show)
    tx.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (SEEDED, str(len(CATALOG))))
    return len(CATALOG)
