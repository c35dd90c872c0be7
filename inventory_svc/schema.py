"""The inventory tables and their migrations: products, reservations, commit reversals and returns."""

from __future__ import annotations

from bus.migrations import Migrations

# The CHECKs are the last line of defence against overselling: a unit that got the arithmetic
# wrong fails with an IntegrityError and is rolled back instead of committing a bad count.
MIGRATIONS = Migrations(
    "inventory",
    (
        """
    CREATE TABLE products (
        sku TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
        on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
        reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
        CHECK (on_hand >= reserved)
    );
    CREATE TABLE reservations (
        order_id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'RELEASED')),
        items TEXT NOT NULL,
        total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
        currency TEXT NOT NULL,
        created_at TEXT NOT NULL,
        released_at TEXT,
        tombstone INTEGER NOT NULL DEFAULT 0 CHECK (tombstone IN (0, 1))
    );
    CREATE INDEX reservations_by_status ON reservations (status, order_id);
    """,
        # Fulfilment: reservations committed (shipped) and units returned; products that are not resold.
        # SQLite cannot alter a CHECK, so the reservations table is made again.
        """
    CREATE TABLE reservations_v2 (
        order_id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'RELEASED', 'COMMITTED')),
        items TEXT NOT NULL,
        total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
        currency TEXT NOT NULL,
        created_at TEXT NOT NULL,
        released_at TEXT,
        tombstone INTEGER NOT NULL DEFAULT 0 CHECK (tombstone IN (0, 1)),
        commit_id TEXT,
        committed_at TEXT,
        CHECK ((status = 'COMMITTED') = (commit_id IS NOT NULL))
    );
    INSERT INTO reservations_v2 (order_id, status, items, total_cents, currency, created_at, released_at, tombstone)
        SELECT order_id, status, items, total_cents, currency, created_at, released_at, tombstone FROM reservations;
    DROP TABLE reservations;
    ALTER TABLE reservations_v2 RENAME TO reservations;
    CREATE INDEX reservations_by_status ON reservations (status, order_id);
    ALTER TABLE products ADD COLUMN resellable INTEGER NOT NULL DEFAULT 1 CHECK (resellable IN (0, 1));
    -- Until now on_hand moved by restocks alone: it is every unit restocked.
    ALTER TABLE products ADD COLUMN restocked_units INTEGER NOT NULL DEFAULT 0 CHECK (restocked_units >= 0);
    UPDATE products SET restocked_units = on_hand;
    CREATE TABLE commit_reversals (
        order_id TEXT NOT NULL,
        commit_id TEXT NOT NULL,
        tombstone INTEGER NOT NULL CHECK (tombstone IN (0, 1)),
        reason TEXT,
        reversed_at TEXT NOT NULL,
        PRIMARY KEY (order_id, commit_id)
    ) WITHOUT ROWID;
    CREATE TABLE returns (
        return_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        items TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE INDEX returns_by_order ON returns (order_id);
    """,
    ),
)
