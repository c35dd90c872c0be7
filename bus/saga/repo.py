"""Every statement on `sagas` and `saga_steps`: the engine's writes and reads, the views, a rebuild's.

A saga's row holds its run (`SagaRun`): status, step index, attempts, its data as JSON and its step
records as a JSON list (`steps`), so that each transition is one UPDATE of one row. The engine's writes
bind a status as its plain value (`_value_`): sqlite3 binds a str subclass through its adapters, at
twice the cost. A rebuild by replay
assembles step records in `saga_steps` instead, one row each, and folds them into their sagas at its
end (`fold_steps`).
"""

from __future__ import annotations

import sqlite3
from typing import Any, TypeVar

from pydantic import BaseModel

from bus import contract as c
from bus import jsonb
from bus.ids import iso
from bus.migrations import statements
from bus.saga.definition import step_names
from bus.saga.schema import FOLD_STEPS
from bus.saga.state import ACTIVE, ActionKind, SagaRun, SagaStatus, StepStatus, load_steps
from bus.unit import Tx, in_window, where

D = TypeVar("D", bound=BaseModel)


# -- the engine's ----------------------------------------------------------------


def insert(tx: Tx, run: SagaRun[Any]) -> None:
    tx.execute(
        "INSERT INTO sagas (saga_id, name, ref, status, step_index, data, deadline_at, attempts, created_at,"
        " updated_at, steps) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
        (
            run.saga_id,
            run.name,
            run.ref,
            run.status._value_,
            jsonb.text(run.data),
            run.deadline_at,
            run.attempts,
            run.created_at,
            run.created_at,
            run.steps_text(),
        ),
    )


def save(tx: Tx, run: SagaRun[Any], now: float, **extra: Any) -> None:
    """The run's state and records, and `extra` columns (its data, errors, times) as given."""
    columns = {
        "status": run.status._value_,
        "step_index": run.step_index,
        "attempts": run.attempts,
        "comp_failures": run.comp_failures,
        "failure_reason": run.failure_reason,
        "updated_at": now,
        "steps": run.steps_text(),
        **extra,
    }
    assignments = ", ".join(f"{name} = ?" for name in columns)
    tx.execute(f"UPDATE sagas SET {assignments} WHERE saga_id = ?", (*columns.values(), run.saga_id))


def save_attempt(tx: Tx, run: SagaRun[Any], action: ActionKind, now: float) -> None:
    """An attempt recorded before its request: the records, and a step's attempt count."""
    if action is ActionKind.INVOKE:
        tx.execute(
            "UPDATE sagas SET attempts = ?, next_retry_at = NULL, updated_at = ?, steps = ? WHERE saga_id = ?",
            (run.attempts, now, run.steps_text(), run.saga_id),
        )
    else:
        tx.execute("UPDATE sagas SET updated_at = ?, steps = ? WHERE saga_id = ?", (now, run.steps_text(), run.saga_id))


def save_retry(tx: Tx, run: SagaRun[Any], now: float, retry_at: float, error: str) -> None:
    tx.execute(
        "UPDATE sagas SET attempts = ?, next_retry_at = ?, last_error = ?, updated_at = ?, steps = ? WHERE saga_id = ?",
        (run.attempts, retry_at, error, now, run.steps_text(), run.saga_id),
    )


def note_stop(tx: Tx, saga_id: str, reason: str, now: float) -> None:
    tx.execute("UPDATE sagas SET stop_reason = ?, updated_at = ? WHERE saga_id = ?", (reason, now, saga_id))


def row(tx: Tx, saga_id: str) -> sqlite3.Row | None:
    return tx.one("SELECT * FROM sagas WHERE saga_id = ?", (saga_id,))


def unfinished(tx: Tx, name: str) -> list[sqlite3.Row]:
    """The sagas of `name` that were running or compensating, oldest first."""
    return tx.all(
        "SELECT * FROM sagas WHERE status IN (?, ?) AND name = ? ORDER BY created_at",
        (SagaStatus.RUNNING, SagaStatus.COMPENSATING, name),
    )


def status(tx: Tx, saga_id: str) -> SagaStatus | None:
    found = tx.one("SELECT status FROM sagas WHERE saga_id = ?", (saga_id,))
    return None if found is None else SagaStatus(found["status"])


def run_of(found: sqlite3.Row, data: type[D]) -> SagaRun[D]:
    """The run a saga's row holds, its data as the saga's model."""
    return SagaRun(
        saga_id=found["saga_id"],
        name=found["name"],
        ref=found["ref"],
        status=SagaStatus(found["status"]),
        step_index=found["step_index"],
        data=data.model_validate_json(found["data"]),
        deadline_at=found["deadline_at"],
        attempts=found["attempts"],
        comp_failures=found["comp_failures"],
        failure_reason=found["failure_reason"],
        stop_reason=found["stop_reason"],
        created_at=found["created_at"],
        steps=load_steps(found["steps"]),
    )


# -- views ------------------------------------------------------------------------


def view(tx: Tx, steps: tuple[str, ...], saga_id: str, stuck_after: int) -> c.SagaView | None:
    """One saga with its step records; `steps`: the saga's step names, in order."""
    found = row(tx, saga_id)
    return None if found is None else _view(found, steps, stuck_after, with_steps=True)


def listing(
    tx: Tx,
    steps: tuple[str, ...],
    status: str | None,
    stuck: bool,
    limit: int,
    stuck_after: int,
    *,
    window: c.Window | None = None,
    data: dict[str, str] | None = None,
) -> list[c.SagaView]:
    """Newest first, without their step records: saga ids begin with their creation time, so a `window` is a
    range of ids. `data`: only sagas whose data holds these values (the caller's domain: a customer, say)."""
    clause, params = where(
        ("status = ?", status),
        ("status IN ('RUNNING', 'COMPENSATING') AND comp_failures >= ?", stuck_after if stuck else None),
        *in_window(window, "saga_id", prefix="saga"),
    )
    for name, value in (data or {}).items():
        clause += f"{' AND' if clause else ' WHERE'} json_extract(data, ?) = ?"
        params.extend((f"$.{name}", value))
    rows = tx.all(f"SELECT * FROM sagas{clause} ORDER BY saga_id DESC LIMIT ?", (*params, limit))
    return [_view(found, steps, stuck_after, with_steps=False) for found in rows]


def _view(found: sqlite3.Row, steps: tuple[str, ...], stuck_after: int, *, with_steps: bool) -> c.SagaView:
    records: list[c.StepRecord] = []
    steps = step_names(found["name"]) or steps
    if with_steps:
        # By start; records without one (a rebuild's) or with the same one go in the saga's step order.
        position = {name: i for i, name in enumerate(steps)}
        ordered = sorted(
            load_steps(found["steps"]).values(),
            key=lambda r: (r["started_at"] or 0, position.get(r["step"], 0), r["action"]),
        )
        records = [
            c.StepRecord(
                step=r["step"],
                action=r["action"],
                status=r["status"],
                attempts=r["attempts"],
                started_at=iso(r["started_at"]) if r["started_at"] else None,
                finished_at=iso(r["finished_at"]) if r["finished_at"] else None,
                duration_ms=r["duration_ms"],
                uncertain=bool(r["uncertain"]),
                last_error=jsonb.loads(r["last_error"]) if r["last_error"] else None,
            )
            for r in ordered
        ]
    index, status = found["step_index"], found["status"]
    return c.SagaView(
        saga_id=found["saga_id"],
        name=found["name"],
        ref=found["ref"],
        status=status,
        failure_reason=found["failure_reason"],
        created_at=iso(found["created_at"]),
        updated_at=iso(found["updated_at"]),
        step=steps[index] if 0 <= index < len(steps) else None,
        compensating=status == SagaStatus.COMPENSATING,
        attempts=found["attempts"] if status == SagaStatus.RUNNING else found["comp_failures"],
        deadline_at=iso(found["deadline_at"]),
        next_retry_at=iso(found["next_retry_at"]) if found["next_retry_at"] else None,
        last_error=jsonb.loads(found["last_error"]) if found["last_error"] else None,
        stuck=status in ACTIVE and found["comp_failures"] >= stuck_after,
        steps=records,
    )


# -- a rebuild's (bus.saga.replay) ---------------------------------------------------


def rebuilt(tx: Tx, saga_id: str, name: str, ref: str, data: BaseModel, created: float) -> None:
    """A saga as its creation's event tells it: running, at its first step."""
    tx.execute(
        "INSERT INTO sagas (saga_id, name, ref, status, step_index, data, deadline_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
        (saga_id, name, ref, SagaStatus.RUNNING, jsonb.text(data), created, created, created),
    )


def data_of(tx: Tx, saga_id: str, data: type[D]) -> D | None:
    found = tx.one("SELECT data FROM sagas WHERE saga_id = ?", (saga_id,))
    return None if found is None else data.model_validate_json(found["data"])


def replayed(tx: Tx, saga_id: str, at: float, **columns: Any) -> None:
    """Set `columns` of a rebuilt saga, and its `updated_at` to `at` (the event's time)."""
    assignments = "".join(f"{name} = ?, " for name in columns)
    tx.execute(f"UPDATE sagas SET {assignments}updated_at = ? WHERE saga_id = ?", (*columns.values(), at, saga_id))


def stop_noted(tx: Tx, saga_id: str, reason: str) -> None:
    """The first stop asked for wins, as in the engine; only a running saga has one."""
    tx.execute(
        "UPDATE sagas SET stop_reason = ? WHERE saga_id = ? AND status = ? AND stop_reason IS NULL",
        (reason, saga_id, SagaStatus.RUNNING),
    )


def step_record(tx: Tx, saga_id: str, step: str) -> sqlite3.Row | None:
    """A step's request, as assembled so far."""
    return tx.one(
        "SELECT status, attempts FROM saga_steps WHERE saga_id = ? AND step = ? AND action = ?",
        (saga_id, step, ActionKind.INVOKE),
    )


def put_record(
    tx: Tx,
    saga_id: str,
    step: str,
    action: ActionKind,
    status: StepStatus,
    at: float,
    *,
    attempts: int,
    uncertain: int = 0,
    error: str | None = None,
    duration_ms: float | None = None,
    keep_error: bool = False,
) -> None:
    """Insert or update one step record; it keeps the time it was first heard of as its start.

    A record that ended (SUCCEEDED or FAILED) ended at `at`; one still going has no end yet.
    """
    finished_at = at if status in (StepStatus.SUCCEEDED, StepStatus.FAILED) else None
    tx.execute(
        "INSERT INTO saga_steps (saga_id, step, action, status, attempts, uncertain, started_at, finished_at,"
        " duration_ms, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (saga_id, step, action) DO UPDATE SET status = excluded.status,"
        " attempts = excluded.attempts, uncertain = uncertain OR excluded.uncertain,"
        " finished_at = coalesce(excluded.finished_at, finished_at),"
        " duration_ms = coalesce(excluded.duration_ms, duration_ms),"
        f" last_error = {'coalesce(excluded.last_error, last_error)' if keep_error else 'excluded.last_error'}",
        (saga_id, step, action, status, attempts, uncertain, at, finished_at, duration_ms, error),
    )


def deadlines_from_creation(tx: Tx, name: str, deadline_s: float) -> None:
    tx.execute("UPDATE sagas SET deadline_at = created_at + ? WHERE name = ?", (deadline_s, name))


def name_of(tx: Tx, saga_id: str) -> str | None:
    found = tx.one("SELECT name FROM sagas WHERE saga_id = ?", (saga_id,))
    return None if found is None else found["name"]


def unfinished_ids(tx: Tx, name: str) -> list[tuple[str, SagaStatus]]:
    rows = tx.all(
        "SELECT saga_id, status FROM sagas WHERE status IN (?, ?) AND name = ?",
        (SagaStatus.RUNNING, SagaStatus.COMPENSATING, name),
    )
    return [(found["saga_id"], SagaStatus(found["status"])) for found in rows]


def restart_forward(tx: Tx, saga_id: str) -> None:
    tx.execute("UPDATE sagas SET step_index = 0, attempts = 0, next_retry_at = NULL WHERE saga_id = ?", (saga_id,))


def restart_backward(tx: Tx, saga_id: str, last_index: int) -> None:
    tx.execute(
        "UPDATE sagas SET step_index = ?, comp_failures = 0, next_retry_at = NULL WHERE saga_id = ?",
        (last_index, saga_id),
    )


def maybe_started(tx: Tx, saga_id: str, steps: list[str], *, uncertain: bool) -> None:
    """Records of `steps` as started, where the events told nothing of them."""
    tx.executemany(
        "INSERT INTO saga_steps (saga_id, step, action, status, attempts, uncertain)"
        " VALUES (?, ?, 'invoke', 'RUNNING', 0, ?) ON CONFLICT (saga_id, step, action) DO NOTHING",
        [(saga_id, step, int(uncertain)) for step in steps],
    )


def fold_steps(tx: Tx) -> None:
    """The records assembled in `saga_steps` move into their sagas' rows."""
    for statement in statements(FOLD_STEPS):
        tx.execute(statement)
