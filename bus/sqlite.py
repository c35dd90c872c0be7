"""SQLite as OMS uses it: the library version its statements need, and each connection's settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

# UPDATE ... RETURNING (3.35) and the JSON functions built in (3.38): a Python linked against an older
# SQLite is refused at start, with this reason, instead of failing in the middle of a saga.
SQLITE_NEEDED = (3, 38, 0)


def connect(path: Path, fsync: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (units of work open their transactions themselves), rows by name."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    _tune(conn, fsync)
    return conn


class SqliteTooOld(RuntimeError):
    """The SQLite library behind Python's sqlite3 lacks statements OMS runs."""


def require_sqlite(version: tuple[int, ...]) -> None:
    """Refuse an SQLite library older than the statements OMS runs need."""
    if tuple(version) < SQLITE_NEEDED:
        have, need = ".".join(map(str, version)), ".".join(map(str, SQLITE_NEEDED))
        raise SqliteTooOld(
            f"SQLite {have} is too old: OMS needs {need} or later (UPDATE ... RETURNING, JSON functions). "
            "Use a Python linked against a newer SQLite (python.org builds and the python:3.11 images are)"
        )


def _tune(conn: sqlite3.Connection, fsync: bool = True) -> None:
    """Settings of each connection (WAL mode is the file's and stays)."""
    # FULL syncs the WAL at every commit (one per group of units): a commit survives power loss. NORMAL
    # syncs only at checkpoints: it survives a killed process, and may lose the last commits on power loss.
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    # Each unit runs in a savepoint, whose undo journal would otherwise spill to a temp file:
    # hundreds of page writes per batch that nothing ever reads unless a unit fails.
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA foreign_keys=ON")
