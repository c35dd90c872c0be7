"""Rebuilding orders, their sagas and their `orders.place` keys from the order service's own events.

What comes back: every order row as the read endpoints show it; for each order
its saga, terminal for a terminal order, RUNNING or COMPENSATING for an
unfinished one, with step records as far as the events tell (their times are
the events' times); and each `orders.place` idempotency key with its request
hash and stored reply, so a repeat still finds its order and a different
payload is still a CONFLICT.

An unfinished saga resumes at the next start. The order service's events do
not say which participant steps took effect (the happy path records them in
inventory's and payment's events), so `settle` makes every step that might have
run count as started: a RUNNING saga starts again at its first step and
re-sends each step with the same idempotency key, and a COMPENSATING saga
re-sends every compensation. Participants answer both idempotently by order id.

Not rebuilt: the keys of `orders.cancel` and of the operator endpoints (what
they do is idempotent by order). Nor do the participants rebuild their
idempotency tables: they are idempotent by order id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus import contract as c
from bus import jsonb
from bus.db import Tx, statements
from bus.errors import Conflict, InvalidRequest, NotFound, OutOfStock, PaymentDeclined
from bus.ids import parse_iso
from bus.saga import CANCELLED, COMPENSATING, COMPLETED, FAILED, FOLD_STEPS, RUNNING
from bus.service import envelope
from bus.settings import Settings
from bus.subjects import ORDERS_PLACE
from order_svc.saga import PLACE_ORDER

STEPS = tuple(step.name for step in PLACE_ORDER.steps)
INDEX = {name: index for index, name in enumerate(STEPS)}
LOCAL_STEPS = tuple(step.name for step in PLACE_ORDER.steps if step.local is not None)
COMPENSABLE = tuple(step.name for step in PLACE_ORDER.steps if step.compensate is not None)
# A step that failed with one of these got a final answer: the participant did nothing to undo.
FINAL_CODES = frozenset(e.code for e in (InvalidRequest, PaymentDeclined, NotFound, Conflict, OutOfStock))

Project = Callable[[Tx, c.Event, float], None]


def apply(tx: Tx, event: c.Event) -> None:
    """Replay one order-service event onto the orders, sagas and idempotency tables (step records go to
    `saga_steps` until `settle` folds them into their sagas)."""
    project = PROJECTIONS.get(event.type)
    if project is not None and event.order_id and event.saga_id:
        project(tx, event, parse_iso(event.occurred_at))


def settle(tx: Tx, settings: Settings) -> None:
    """Deadlines from the creation time; every step an unfinished saga might have run counts as started.
    Then each saga's step records move into its row."""
    tx.execute("UPDATE sagas SET deadline_at = created_at + ?", (settings.saga.deadline_ms / 1000,))
    unfinished = tx.all("SELECT saga_id, status FROM sagas WHERE status IN (?, ?)", (RUNNING, COMPENSATING))
    for row in unfinished:
        running = row["status"] == RUNNING
        if running:
            tx.execute(
                "UPDATE sagas SET step_index = 0, attempts = 0, next_retry_at = NULL WHERE saga_id = ?",
                (row["saga_id"],),
            )
        else:
            tx.execute(
                "UPDATE sagas SET step_index = ?, comp_failures = 0, next_retry_at = NULL WHERE saga_id = ?",
                (len(STEPS) - 1, row["saga_id"]),
            )
        # A RUNNING step is compensated if the saga has to turn back; a step that then fails with a
        # final answer is not. A compensating saga re-sends every compensation (they are idempotent).
        tx.executemany(
            "INSERT INTO saga_steps (saga_id, step, action, status, attempts, uncertain)"
            " VALUES (?, ?, 'invoke', 'RUNNING', 0, ?) ON CONFLICT (saga_id, step, action) DO NOTHING",
            [(row["saga_id"], step, int(not running)) for step in COMPENSABLE],
        )
    # The records were assembled in `saga_steps`; a saga keeps them in its own row.
    for statement in statements(FOLD_STEPS):
        tx.execute(statement)


# -- one projection per event type ------------------------------------------


def _created(tx: Tx, e: c.Event, at: float) -> None:
    d = e.data
    created_at, items, key = d.get("created_at") or e.occurred_at, jsonb.text(d["items"]), d.get("idempotency_key")
    cur = tx.execute(
        "INSERT INTO orders (order_id, customer_id, status, items, payment_method, saga_id, idempotency_key,"
        " created_at, updated_at) VALUES (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (e.order_id, d["customer_id"], items, d["payment_method"], e.saga_id, key, created_at, created_at),
    )
    if cur.rowcount == 0:
        return  # a repeat of the event
    created = parse_iso(created_at)
    data = {"order_id": e.order_id, **{k: d[k] for k in ("customer_id", "items", "payment_method")}}
    tx.execute(
        "INSERT INTO sagas (saga_id, name, ref, status, step_index, data, deadline_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
        (e.saga_id, PLACE_ORDER.name, e.order_id, RUNNING, jsonb.text(data), created, created, created),
    )
    digest = d.get("request_hash")
    if key and digest:
        placed = c.Order(
            order_id=e.order_id,
            customer_id=d["customer_id"],
            status=c.OrderStatus.PENDING,
            items=d["items"],
            payment_method=d["payment_method"],
            idempotency_key=key,
            created_at=created_at,
            updated_at=created_at,
        )
        tx.execute(
            "INSERT INTO idempotency (key, endpoint, request_hash, reply, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (key, ORDERS_PLACE.subject, digest, envelope(placed), created_at),
        )


def _step_retried(tx: Tx, e: c.Event, at: float) -> None:
    if _status(tx, e) != RUNNING:
        return
    d = e.data
    _earlier_succeeded(tx, e.saga_id, d["step"], at)
    _record(tx, e.saga_id, d["step"], "invoke", "RETRYING", at, attempts=d["attempt"], uncertain=1, error=_error(d))
    tx.execute(
        "UPDATE sagas SET step_index = ?, attempts = ?, last_error = ?, updated_at = ? WHERE saga_id = ?",
        (INDEX[d["step"]], d["attempt"], _error(d), at, e.saga_id),
    )


def _step_failed(tx: Tx, e: c.Event, at: float) -> None:
    if _status(tx, e) != RUNNING:
        return
    d = e.data
    _earlier_succeeded(tx, e.saga_id, d["step"], at)
    # Events since `uncertain` was added say whether the step may have taken effect (a success refused by the
    # saga's check did, with a final code); earlier ones leave it to the code.
    uncertain = int(d.get("uncertain", d["error"] not in FINAL_CODES))
    _record(
        tx, e.saga_id, d["step"], "invoke", "FAILED", at, attempts=d["attempt"], uncertain=uncertain, error=_error(d)
    )
    tx.execute("UPDATE sagas SET step_index = ?, updated_at = ? WHERE saga_id = ?", (INDEX[d["step"]], at, e.saga_id))


def _compensating(tx: Tx, e: c.Event, at: float) -> None:
    status = _status(tx, e)
    if status not in (RUNNING, COMPLETED):
        return
    d = e.data
    reason = d["reason"]
    tx.execute(
        "UPDATE orders SET status = 'COMPENSATING', failure_reason = ?, updated_at = ? WHERE order_id = ?",
        (None if reason == CANCELLED else reason, d.get("updated_at") or e.occurred_at, e.order_id),
    )
    if "items" in d:
        tx.execute(
            "UPDATE orders SET items = ?, total_cents = ?, currency = ?, cancel_reason = ? WHERE order_id = ?",
            (jsonb.text(d["items"]), d["total_cents"], d["currency"], d["cancel_reason"], e.order_id),
        )
    # A confirmed order being cancelled turns back from its last step.
    index = len(STEPS) - 1 if status == COMPLETED else None
    tx.execute(
        "UPDATE sagas SET status = ?, failure_reason = ?, step_index = coalesce(?, step_index), attempts = 0,"
        " comp_failures = 0, next_retry_at = NULL, data = ?, updated_at = ? WHERE saga_id = ?",
        (COMPENSATING, reason, index, _priced(tx, e.saga_id, d), at, e.saga_id),
    )


def _cancel_requested(tx: Tx, e: c.Event, at: float) -> None:
    """The saga turns back at its next step boundary; a confirmed one was reopened in the same unit of work
    (its `order_compensating` follows)."""
    tx.execute("UPDATE orders SET cancel_reason = ? WHERE order_id = ?", (e.data["reason"], e.order_id))
    tx.execute(  # the first stop asked for wins, as in the engine
        "UPDATE sagas SET stop_reason = 'CANCELLED' WHERE saga_id = ? AND status = ? AND stop_reason IS NULL",
        (e.saga_id, RUNNING),
    )


def _abort_requested(tx: Tx, e: c.Event, at: float) -> None:
    """An operator aborted the saga: it turns back at its next step boundary, as it would have."""
    tx.execute(
        "UPDATE sagas SET stop_reason = ? WHERE saga_id = ? AND status = ? AND stop_reason IS NULL",
        (e.data["reason"], e.saga_id, RUNNING),
    )


def _compensation_retried(tx: Tx, e: c.Event, at: float) -> None:
    if _status(tx, e) != COMPENSATING:
        return
    d = e.data
    _record(tx, e.saga_id, d["step"], "compensate", "RETRYING", at, attempts=d["attempt"], error=_error(d))
    tx.execute(
        "UPDATE sagas SET step_index = ?, comp_failures = ?, last_error = ?, updated_at = ? WHERE saga_id = ?",
        (INDEX[d["step"]], d["attempt"], _error(d), at, e.saga_id),
    )


def _step_compensated(tx: Tx, e: c.Event, at: float) -> None:
    if _status(tx, e) != COMPENSATING:
        return
    d = e.data
    # The engine keeps the last failed attempt's error on a compensation that then succeeded.
    step, attempts, duration_ms = d["step"], d["attempts"], d.get("duration_ms")
    _record(
        tx, e.saga_id, step, "compensate", "SUCCEEDED", at, attempts=attempts, duration_ms=duration_ms, keep_error=True
    )
    tx.execute(
        "UPDATE sagas SET step_index = ?, comp_failures = 0, last_error = NULL, updated_at = ? WHERE saga_id = ?",
        (INDEX[d["step"]], at, e.saga_id),
    )


def _confirmed(tx: Tx, e: c.Event, at: float) -> None:
    if _status(tx, e) != RUNNING:
        return
    d = e.data
    items, updated_at = jsonb.text(d["items"]) if d.get("items") else None, d.get("updated_at") or e.occurred_at
    tx.execute(
        "UPDATE orders SET status = 'CONFIRMED', items = coalesce(?, items), total_cents = ?, currency = ?,"
        " updated_at = ? WHERE order_id = ?",
        (items, d.get("total_cents"), d.get("currency"), updated_at, e.order_id),
    )
    told = {step["step"]: step for step in d.get("steps", [])}
    for name in STEPS:
        step = told.get(name, {"attempts": 1, "duration_ms": 0} if name in LOCAL_STEPS else None)
        if step is not None:
            attempts, duration_ms = step["attempts"], step["duration_ms"]
            _record(tx, e.saga_id, name, "invoke", "SUCCEEDED", at, attempts=attempts, duration_ms=duration_ms)
    tx.execute(
        "UPDATE sagas SET status = ?, step_index = ?, attempts = 0, data = ?, last_error = NULL,"
        " next_retry_at = NULL, finished_at = ?, updated_at = ? WHERE saga_id = ?",
        (COMPLETED, len(STEPS), _priced(tx, e.saga_id, d), at, at, e.saga_id),
    )


def _finished(status: str) -> Project:
    def project(tx: Tx, e: c.Event, at: float) -> None:
        if _status(tx, e) not in (RUNNING, COMPENSATING):
            return
        d = e.data
        updated_at = d.get("updated_at") or e.occurred_at
        if status == FAILED:
            tx.execute(
                "UPDATE orders SET status = 'FAILED', failure_reason = ?, updated_at = ? WHERE order_id = ?",
                (d.get("reason"), updated_at, e.order_id),
            )
            reason = d.get("reason")
        else:
            tx.execute(
                "UPDATE orders SET status = 'CANCELLED', cancel_reason = ?, updated_at = ? WHERE order_id = ?",
                (d.get("reason"), updated_at, e.order_id),
            )
            reason = CANCELLED
        tx.execute(
            "UPDATE sagas SET status = ?, failure_reason = ?, attempts = 0, comp_failures = 0, next_retry_at = NULL,"
            " finished_at = ?, updated_at = ? WHERE saga_id = ?",
            (status, reason, at, at, e.saga_id),
        )

    return project


PROJECTIONS: dict[str, Project] = {
    "order_created": _created,
    "step_retried": _step_retried,
    "step_failed": _step_failed,
    "cancel_requested": _cancel_requested,
    "abort_requested": _abort_requested,
    "order_compensating": _compensating,
    "compensation_retried": _compensation_retried,
    "step_compensated": _step_compensated,
    "order_confirmed": _confirmed,
    "order_failed": _finished(FAILED),
    "order_cancelled": _finished(CANCELLED),
}


# -- rows ---------------------------------------------------------------------


def _status(tx: Tx, e: c.Event) -> str | None:
    """The saga's status now; each projection acts only from the states its event can follow."""
    row = tx.one("SELECT status FROM sagas WHERE saga_id = ?", (e.saga_id,))
    return row["status"] if row else None


def _priced(tx: Tx, saga_id: str | None, d: dict[str, Any]) -> str:
    """The saga's data with the total the reservation fixed, when the event tells it."""
    row = tx.one("SELECT data FROM sagas WHERE saga_id = ?", (saga_id,))
    data = jsonb.loads(row["data"]) if row else {}
    if d.get("total_cents") is not None:
        data["total_cents"], data["currency"] = d["total_cents"], d.get("currency")
    return jsonb.text(data)


def _error(d: dict[str, Any]) -> str:
    return jsonb.text({"code": d.get("error"), "message": d.get("message")})


def _earlier_succeeded(tx: Tx, saga_id: str | None, step: str, at: float) -> None:
    """A saga only reaches a step after every step before it succeeded."""
    for name in STEPS[: INDEX[step]]:
        row = tx.one(
            "SELECT status, attempts FROM saga_steps WHERE saga_id = ? AND step = ? AND action = 'invoke'",
            (saga_id, name),
        )
        if row is None or row["status"] != "SUCCEEDED":
            # After n retried attempts, attempt n + 1 was the one that succeeded.
            attempts = row["attempts"] + 1 if row is not None and row["status"] == "RETRYING" else 1
            _record(tx, saga_id, name, "invoke", "SUCCEEDED", at, attempts=attempts)


def _record(
    tx: Tx,
    saga_id: str | None,
    step: str,
    action: str,
    status: str,
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
    finished_at = at if status in ("SUCCEEDED", "FAILED") else None
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
