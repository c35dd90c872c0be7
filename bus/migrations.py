"""Versioned migrations per owner: each owner's scripts in order, counted in a version row of its own.

A service's file holds the tables of several owners: the kernel's (outbox,
idempotency, meta), the saga engine's, the service's own. Each owner numbers
its migrations itself, in `schema_versions`, so one can add a migration
without renumbering another's. A migration is never changed once released: a
change is a new one, appended.

Files made before the version rows (up to f2055dd) counted every migration
in one number, `PRAGMA user_version`, in the order their service listed them
(the kernel's first). A `Schema` knows that order (`numbered`), and the first
open of such a file turns its number into one row per owner; from then on the
rows alone count.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

VERSIONS_TABLE = "CREATE TABLE IF NOT EXISTS schema_versions (owner TEXT PRIMARY KEY, version INTEGER NOT NULL)"


@dataclass(frozen=True)
class Migrations:
    """One owner's tables: its scripts, applied in order; version n means its first n have run."""

    owner: str
    scripts: tuple[str, ...]


@dataclass(frozen=True)
class Schema:
    """What one kind of file holds: its owners' migrations, in the order a new file applies them.

    `numbered`: (owner, version) of each migration in the order files numbered by position applied them
    (after the kernel's); by default every owner's scripts in the order given."""

    owners: tuple[Migrations, ...]
    numbered: tuple[tuple[str, int], ...] | None = None

    def __init__(self, *owners: Migrations, numbered: Sequence[tuple[str, int]] | None = None) -> None:
        object.__setattr__(self, "owners", owners)
        object.__setattr__(self, "numbered", None if numbered is None else tuple(numbered))

    def positions(self) -> tuple[tuple[str, int], ...]:
        if self.numbered is not None:
            return self.numbered
        return tuple((m.owner, n) for m in self.owners for n in range(1, len(m.scripts) + 1))


def migrate(conn: sqlite3.Connection, kernel: Migrations, schema: Schema, service: str) -> None:
    """Bring the file up to date: each migration in a transaction of its own, with its version row."""
    owners = (kernel, *schema.owners)
    _once(conn, lambda: _from_user_version(conn, ((kernel.owner, 1), *schema.positions())))
    reached = versions(conn)
    for migrations in owners:
        done = reached.get(migrations.owner, 0)
        if done > len(migrations.scripts):
            raise RuntimeError(
                f"{service}: {migrations.owner}'s tables are at version {done}, newer than this OMS knows"
                f" ({len(migrations.scripts)}): run a newer OMS on this file"
            )
        for number, script in enumerate(migrations.scripts[done:], start=done + 1):
            _once(conn, lambda: _apply(conn, migrations.owner, script, number))  # noqa: B023 (called at once)
            log.info("migrated", extra={"service": service, "owner": migrations.owner, "version": number})


def versions(conn: sqlite3.Connection) -> dict[str, int]:
    """Each owner's version in this file."""
    return dict(conn.execute("SELECT owner, version FROM schema_versions").fetchall())


def statements(script: str) -> list[str]:
    """The statements of a migration script."""
    return [s.strip() for s in script.split(";") if s.strip()]


def _once(conn: sqlite3.Connection, work: Callable[[], None]) -> None:
    """`work` in a transaction of its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        work()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _apply(conn: sqlite3.Connection, owner: str, script: str, number: int) -> None:
    for statement in statements(script):
        conn.execute(statement)
    conn.execute(
        "INSERT INTO schema_versions (owner, version) VALUES (?, ?)"
        " ON CONFLICT (owner) DO UPDATE SET version = excluded.version",
        (owner, number),
    )


def _from_user_version(conn: sqlite3.Connection, positions: Sequence[tuple[str, int]]) -> None:
    """Make the version table; a file numbered by position gets a row per owner from its number."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_versions'").fetchone()
    conn.execute(VERSIONS_TABLE)
    number = conn.execute("PRAGMA user_version").fetchone()[0]
    if found or not number:
        return
    if number > len(positions):
        raise RuntimeError(f"the file is at migration {number}, newer than this OMS knows ({len(positions)})")
    reached: dict[str, int] = {}
    for owner, version in positions[:number]:
        reached[owner] = max(reached.get(owner, 0), version)
    conn.executemany("INSERT INTO schema_versions (owner, version) VALUES (?, ?)", list(reached.items()))
