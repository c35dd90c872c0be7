"""A unit of work's side: what it sees (`Tx`), and how it keeps its writes while answering an error
(`Rejected`). Units run in `bus.db.Database`'s group commit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bus import jsonb
from bus import outbox as ob
from bus.contract import Window
from bus.errors import OmsError
from bus.ids import iso, new_id, now_iso
from bus.outbox import OutboxRow
from bus.subjects import event_subject


@dataclass(frozen=True, slots=True)
class Rejected:
    """What a unit returns to keep its writes and answer an error: `return Rejected(OutOfStock(...))`."""

    error: OmsError


class Tx:
    """What a unit of work sees: SQL on the open transaction, `emit` for events, `after_commit` for what
    follows the commit."""

    __slots__ = ("_after", "_conn", "events", "saga_id", "service")

    def __init__(self, conn: sqlite3.Connection, service: str) -> None:
        self._conn = conn
        self.service = service
        self.events: list[OutboxRow] = []
        self._after: list[Callable[[], None]] | None = None
        # The saga this unit works for, when its request came under a saga's key (`{saga_id}:{step}:{action}`,
        # `bus.idempotency.once`): what the events it emits name when they name no saga themselves.
        self.saga_id: str | None = None

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        return self._conn.executemany(sql, rows)

    def one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        return self._conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    def undo(self) -> None:
        """Undo everything this unit of work has done so far (its rows, its events, what it asked to run
        after the commit); it goes on from there."""
        self._conn.execute("ROLLBACK TO unit")
        self.events.clear()
        self._after = None

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once this unit has committed (not at all if it is undone or raises). The writer runs it
        on the loop, right after COMMIT, before the unit's caller resumes: it must be short and not block. One
        that raises fails the unit's caller, whose writes stay committed."""
        if self._after is None:
            self._after = []
        self._after.append(fn)

    def emit(
        self,
        event_type: str,
        key: str,
        data: dict[str, Any],
        *,
        order_id: str | None = None,
        saga_id: str | None = None,
    ) -> dict[str, Any]:
        """Record an event in the outbox, in this transaction; the relay publishes it after commit."""
        event_id = new_id("evt")
        body = {
            "event_id": event_id,
            "type": event_type,
            "occurred_at": now_iso(),
            "service": self.service,
            "order_id": order_id,
            "saga_id": saga_id if saga_id is not None else self.saga_id,
            "data": data,
        }
        subject = event_subject(self.service, event_type, key)
        self.events.append(ob.insert(self._conn, event_id, subject, jsonb.dumps(body)))
        return body


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause of the conditions whose value is not None (each `column op ?`, with its value), and
    their values: `where(("status = ?", status), ("order_id > ?", after))`; empty when none applies."""
    applied = [(clause, value) for clause, value in conditions if value is not None]
    if not applied:
        return "", []
    return " WHERE " + " AND ".join(clause for clause, _ in applied), [value for _, value in applied]


def in_window(
    w: Window | None, key: str, *, prefix: str | None = None, created: str | None = None
) -> list[tuple[str, Any]]:
    """A list's window (`c.Window`) as conditions for `where`: `before` and `after` bound `key`; `since` and
    `until` bound the time column `created` (ISO text), or, for a key whose ids begin with their creation
    time (`bus.ids.new_id` with `prefix`), the key itself, so that its index serves them."""
    if w is None:
        return []
    found = [(f"{key} < ?", w.before), (f"{key} > ?", w.after)]
    if created is not None:
        since, until = (iso(t.timestamp()) if t else None for t in (w.since, w.until))
        found += [(f"{created} >= ?", since), (f"{created} < ?", until)]
    elif prefix is not None:
        low, high = w.key_range(prefix)
        found += [(f"{key} >= ?", low), (f"{key} < ?", high)]
    return found
