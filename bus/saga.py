"""The durable saga engine: steps declared as data, every transition persisted, resumed after a crash.

Forward: each step's attempt is recorded *before* its request and its outcome
*after*, with the idempotency key `{saga_id}:{step}:{action}`, so a resumed
saga re-sends the same request safely. Transient errors (timeout, no
responders, UNAVAILABLE, breaker open) are unknown outcomes: retried with
backoff until the step's attempts or the saga's deadline run out. Business
errors are final and start compensation at once.

Backward: every step that succeeded *or might have* (an attempt whose outcome
is unknown) is compensated in reverse order. Compensations are idempotent on
the participant side and retried with capped backoff until they succeed; a
saga that keeps failing them is reported as stuck but never gives up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from bus import jsonb
from bus.contract import SagaView, StepRecord, Window
from bus.db import Database, Tx
from bus.errors import BreakerOpen, BusinessError, OmsError
from bus.ids import iso
from bus.metrics import Metrics
from bus.settings import SagaSettings
from bus.subjects import Route

log = logging.getLogger(__name__)

RUNNING, COMPENSATING, COMPLETED, FAILED, CANCELLED = (
    "RUNNING",
    "COMPENSATING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
)
ACTIVE = frozenset({RUNNING, COMPENSATING})
CANCEL_REASONS = frozenset({"CANCELLED"})

SAGA_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sagas (
        saga_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        ref TEXT NOT NULL,
        status TEXT NOT NULL,
        step_index INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL,
        deadline_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        comp_failures INTEGER NOT NULL DEFAULT 0,
        next_retry_at REAL,
        last_error TEXT,
        failure_reason TEXT,
        stop_reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX sagas_status ON sagas (status);
    CREATE INDEX sagas_ref ON sagas (ref);
    CREATE TABLE saga_steps (
        saga_id TEXT NOT NULL,
        step TEXT NOT NULL,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        uncertain INTEGER NOT NULL DEFAULT 0,
        started_at REAL,
        finished_at REAL,
        duration_ms REAL,
        last_error TEXT,
        PRIMARY KEY (saga_id, step, action)
    );
    """,
)

# Step records in `saga_steps` moved into their saga's row, and the table emptied (the upgrade below, and the
# end of a rebuild by replay). Part of a migration: never change it, write a new one. SQLite writes a time in
# JSON to 15 digits (10 us): a rebuild's times come from events, in milliseconds, and lose nothing.
FOLD_STEPS = """
    UPDATE sagas SET steps = (
        SELECT json_group_array(json_object(
            'step', step, 'action', action, 'status', status, 'attempts', attempts,
            'uncertain', json(CASE WHEN uncertain THEN 'true' ELSE 'false' END),
            'started_at', started_at, 'finished_at', finished_at, 'duration_ms', duration_ms,
            'last_error', last_error))
        FROM saga_steps WHERE saga_steps.saga_id = sagas.saga_id)
    WHERE saga_id IN (SELECT saga_id FROM saga_steps);
    DELETE FROM saga_steps;
"""

# Migrations are applied by position: a service lists SAGA_MIGRATIONS, then its own, then these.
SAGA_UPGRADES: tuple[str, ...] = (
    # Step records keyed and stored by (saga_id, step, action) alone: one B-tree per write instead of two.
    # sagas_ref indexed a column no query looks up.
    """
    CREATE TABLE saga_steps_keyed (
        saga_id TEXT NOT NULL,
        step TEXT NOT NULL,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        uncertain INTEGER NOT NULL DEFAULT 0,
        started_at REAL,
        finished_at REAL,
        duration_ms REAL,
        last_error TEXT,
        PRIMARY KEY (saga_id, step, action)
    ) WITHOUT ROWID;
    INSERT INTO saga_steps_keyed SELECT saga_id, step, action, status, attempts, uncertain, started_at,
        finished_at, duration_ms, last_error FROM saga_steps;
    DROP TABLE saga_steps;
    ALTER TABLE saga_steps_keyed RENAME TO saga_steps;
    DROP INDEX sagas_ref;
    """,
    # Listings, newest first, walk an index instead of sorting every saga ever run: saga ids begin with
    # their creation time (like order ids), and the status index carries them.
    """
    DROP INDEX sagas_status;
    CREATE INDEX sagas_status ON sagas (status, saga_id);
    """,
    # A saga's step records live in its own row (a JSON list, `steps`): each transition is one UPDATE of that
    # row instead of one more statement per record. `saga_steps` stays, empty: a rebuild by replay assembles
    # records there and folds them in at its end (FOLD_STEPS).
    """
    ALTER TABLE sagas ADD COLUMN steps TEXT NOT NULL DEFAULT '[]';
    """
    + FOLD_STEPS,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `maximum_attempts` 0 means retry forever."""

    initial_interval: float = 0.1
    backoff_coefficient: float = 2.0
    maximum_interval: float = 2.0
    maximum_attempts: int = 8

    @classmethod
    def from_settings(cls, s: SagaSettings, *, forever: bool = False) -> RetryPolicy:
        return cls(
            s.retry_initial_ms / 1000,
            s.retry_multiplier,
            s.retry_max_interval_ms / 1000,
            0 if forever else s.retry_max_attempts,
        )

    def backoff(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.maximum_interval, self.initial_interval * self.backoff_coefficient ** (attempt - 1))
        return rng.uniform(0, ceiling)

    def exhausted(self, attempt: int) -> bool:
        return bool(self.maximum_attempts) and attempt >= self.maximum_attempts


@dataclass(frozen=True)
class Action:
    """A request to a participant, built from the saga's data."""

    route: Route
    payload: Callable[[dict[str, Any]], BaseModel | dict[str, Any]]  # a dict is sent as it is


@dataclass(frozen=True)
class Step:
    name: str
    invoke: Action | None = None
    compensate: Action | None = None
    local: Callable[[Tx, SagaRun], None] | None = None
    on_success: Callable[[Tx, SagaRun, dict[str, Any]], None] | None = None
    retry: RetryPolicy | None = None
    # Whether a participant's success answers what was asked (given the saga's data and the result): an
    # error here fails the step, and what the participant did is compensated like any step that took effect.
    check: Callable[[dict[str, Any], dict[str, Any]], OmsError | None] | None = None


class SagaHooks(Protocol):
    """What the owning service does, in the same transaction, when a saga changes course."""

    def on_stop_requested(self, tx: Tx, run: SagaRun, reason: str, note: str | None) -> None: ...
    def on_compensating(self, tx: Tx, run: SagaRun, reason: str) -> None: ...
    def on_finished(self, tx: Tx, run: SagaRun, status: str, reason: str | None) -> None: ...


@dataclass(frozen=True)
class Saga:
    name: str
    steps: tuple[Step, ...]
    hooks: SagaHooks

    def __init__(self, name: str, *steps: Step, hooks: SagaHooks) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "hooks", hooks)


@dataclass
class SagaRun:
    """A saga's execution state: which step, which direction, and its data."""

    saga_id: str
    name: str
    ref: str
    status: str
    step_index: int
    data: dict[str, Any]
    deadline_at: float
    attempts: int = 0
    comp_failures: int = 0
    failure_reason: str | None = None
    stop_reason: str | None = None
    created_at: float = 0.0
    start_recorded: bool = False  # the current step's attempt was recorded with the previous outcome
    settle_seq: int = 0  # the outbox sequence JetStream must have acknowledged before the saga acts
    # Its step records by (step, action), in the order they began: saved with the saga row (`steps`).
    steps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)
    result: Any = field(default=None, repr=False)  # what the hooks leave for a waiter once the saga ends
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @classmethod
    def from_row(cls, row: Any) -> SagaRun:
        return cls(
            saga_id=row["saga_id"],
            name=row["name"],
            ref=row["ref"],
            status=row["status"],
            step_index=row["step_index"],
            data=jsonb.loads(row["data"]),
            deadline_at=row["deadline_at"],
            attempts=row["attempts"],
            comp_failures=row["comp_failures"],
            failure_reason=row["failure_reason"],
            stop_reason=row["stop_reason"],
            created_at=row["created_at"],
            steps=load_steps(row["steps"]),
        )

    def record(self, step: str, action: str) -> dict[str, Any]:
        """The step record of `action` on `step`, begun now if there is none."""
        found = self.steps.get((step, action))
        if found is None:
            found = self.steps[(step, action)] = {
                "step": step,
                "action": action,
                "status": "RUNNING",
                "attempts": 0,
                "uncertain": False,
                "started_at": None,
                "finished_at": None,
                "duration_ms": None,
                "last_error": None,
            }
        return found

    def steps_text(self) -> str:
        return jsonb.text(list(self.steps.values()))


def load_steps(text: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["step"], r["action"]): r for r in jsonb.loads(text)} if text else {}


Send = Callable[..., Awaitable[dict[str, Any]]]


@dataclass
class _Claim:
    """A saga whose row is being read to drive it; `stop_noted` when a stop committed meanwhile."""

    stop_noted: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _error_json(exc: BaseException) -> str:
    if isinstance(exc, OmsError):
        return jsonb.text({"code": exc.code, "message": exc.message})
    return jsonb.text({"code": "INTERNAL", "message": type(exc).__name__})


class SagaEngine:
    """Runs one saga definition's instances: many at once (bounded), each one step at a time."""

    def __init__(
        self,
        db: Database,
        saga: Saga,
        send: Send,
        settings: SagaSettings,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.saga = saga
        self.send = send
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.step_timeout_s = settings.step_timeout_ms / 1000
        self.retry = RetryPolicy.from_settings(settings)
        self.comp_retry = RetryPolicy.from_settings(settings, forever=True)
        self._runs: dict[str, SagaRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._driver_failures: Counter[str] = Counter()  # consecutive unexpected failures, by saga
        # Sagas whose row is being read to drive them from it (`_drive_stored`), each with whether a stop
        # was noted since the read began: while a saga is here, nothing else starts a driver for it.
        self._claims: dict[str, _Claim] = {}
        self.counts: Counter[str] = Counter()  # retries, compensations and outcomes since start
        self._slots = asyncio.Semaphore(settings.max_concurrent)

    # -- lifecycle ------------------------------------------------------------

    def create(self, tx: Tx, saga_id: str, ref: str, data: dict[str, Any]) -> SagaRun:
        """Insert a new saga in the caller's transaction; `start` it after commit."""
        now = self.clock()
        run = SagaRun(saga_id, self.saga.name, ref, RUNNING, 0, data, now + self.settings.deadline_ms / 1000)
        run.created_at = now
        if self.saga.steps and self.saga.steps[0].invoke is not None:
            self._record_start(tx, run, self.saga.steps[0], "invoke", 1, persist=False)
        tx.execute(
            "INSERT INTO sagas (saga_id, name, ref, status, step_index, data, deadline_at, attempts, created_at,"
            " updated_at, steps) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
            (
                saga_id,
                run.name,
                ref,
                RUNNING,
                jsonb.text(data),
                run.deadline_at,
                run.attempts,
                now,
                now,
                run.steps_text(),
            ),
        )
        return run

    def start(self, run: SagaRun) -> None:
        """Drive `run`, unless a driver has the saga or its records are being read to drive it (that
        reader then drives it, from what it read after `run` was committed)."""
        if run.saga_id in self._runs or run.saga_id in self._claims or run.status not in ACTIVE:
            return
        self._runs[run.saga_id] = run
        if self.metrics:
            self.metrics.sagas_in_flight.inc()
        self._spawn(self._drive(run), f"saga-{run.saga_id}")

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resume(self, row: Any) -> None:
        self._start_stored(SagaRun.from_row(row))

    def _start_stored(self, run: SagaRun) -> None:
        """Drive a saga read from its records. Its events may still wait in the outbox (a crash before their
        acknowledgement): it sends nothing until they are in JetStream, as a new one waits for its
        order's creation."""
        run.settle_seq = self.db.horizon
        self.start(run)

    def _restart_later(self, saga_id: str) -> float:
        """Drive a saga again, after a capped backoff, once its driver failed unexpectedly; returns the delay."""
        self._driver_failures[saga_id] += 1
        delay = self.comp_retry.backoff(self._driver_failures[saga_id], self.rng)
        self._spawn(self._restart(saga_id, delay), f"saga-restart-{saga_id}")
        return delay

    async def _restart(self, saga_id: str, delay: float) -> None:
        """From what its records say, since the failure may have left the run in memory ahead of a unit
        of work that was rolled back."""
        await asyncio.sleep(delay)
        try:
            await self._drive_stored(saga_id)
        except Exception:
            retry_in = self._restart_later(saga_id)
            log.exception("saga restart failed; trying again", extra={"saga_id": saga_id, "retry_in_s": retry_in})

    async def _drive_stored(self, saga_id: str) -> str | None:
        """Drive a saga from its records, unless a driver or another such read has it; returns the status
        read (None when someone else has the saga).

        The saga is claimed before its row is read, and nothing starts a driver for a claimed saga: the row
        read is the one the saga's last driver left, never one taken while a driver was still writing (a
        row read before a driver's last units and acted on after it ended would drive the saga again, from a
        state it had left). A stop noted during the read (a cancel's unit of work) makes it read again."""
        if saga_id in self._runs or saga_id in self._claims:
            return None
        claim = self._claims[saga_id] = _Claim()
        try:
            while True:
                claim.stop_noted = False
                row = await self.db.read(lambda tx: tx.one("SELECT * FROM sagas WHERE saga_id = ?", (saga_id,)))
                if not claim.stop_noted:
                    break
        finally:
            del self._claims[saga_id]
            claim.done.set()
        if row is None:
            return None
        self._resume(row)
        return str(row["status"])

    async def resume_all(self) -> int:
        """Start every saga that was running or compensating when the service last stopped."""
        rows = await self.db.read(
            lambda tx: tx.all(
                "SELECT * FROM sagas WHERE status IN (?, ?) AND name = ? ORDER BY created_at",
                (RUNNING, COMPENSATING, self.saga.name),
            )
        )
        for row in rows:
            self._resume(row)
        if rows:
            log.info("sagas resumed", extra={"count": len(rows)})
        return len(rows)

    async def stop(self) -> None:
        """Stop driving sagas; their state is durable and they resume at the next start."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._runs)

    async def wait(self, saga_id: str, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the saga to end; True once it is not active here."""
        claim = self._claims.get(saga_id)
        if saga_id not in self._runs and claim is None:
            return True
        try:
            async with asyncio.timeout(timeout_s):  # no task of its own, unlike wait_for
                if claim is not None:  # its records are being read: it is driven once they are
                    await claim.done.wait()
                run = self._runs.get(saga_id)
                if run is not None:
                    await run.done.wait()
        except TimeoutError:
            return False
        return True

    # -- operator and user actions -------------------------------------------

    def driving(self, saga_id: str) -> bool:
        """Whether this instance drives the saga now."""
        return saga_id in self._runs

    def retry_now(self, saga_id: str) -> bool:
        run = self._runs.get(saga_id)
        if run is None:
            return False
        run.wake.set()
        return True

    def request_stop(
        self, tx: Tx, saga_id: str, reason: str, *, reopen: bool, note: str | None = None
    ) -> SagaRun | None:
        """Cancel or abort, in the caller's unit of work (with whatever else asked for it, so that a crash
        cannot keep one without the other). A running saga turns back at its next step boundary; the first
        stop asked for wins. A completed one is reopened and compensated, when `reopen`. Returns the run: hand
        it to `stopped` once the unit has committed."""
        row = tx.one("SELECT * FROM sagas WHERE saga_id = ?", (saga_id,))
        if row is None:
            return None
        run = self._runs.get(saga_id) or SagaRun.from_row(row)
        claim = self._claims.get(saga_id)
        if claim is not None:  # its row is being read to drive it: read again, to see this stop
            claim.stop_noted = True
        if row["status"] == RUNNING and not row["stop_reason"]:
            tx.execute(
                "UPDATE sagas SET stop_reason = ?, updated_at = ? WHERE saga_id = ?", (reason, self.clock(), saga_id)
            )
            run.stop_reason = reason
            # A state change like any other: its event lets a rebuild by replay turn the saga back too.
            self.saga.hooks.on_stop_requested(tx, run, reason, note)
        elif row["status"] == COMPLETED and reopen:
            run.status = RUNNING  # so that the transition below is the normal one
            self._begin_compensation(tx, run, reason, index=len(self.saga.steps) - 1)
        return run

    async def stopped(self, run: SagaRun | None) -> str:
        """After `request_stop` committed: wake the saga's driver, or drive it. Returns its status."""
        if run is None:
            return "UNKNOWN"
        live = self._runs.get(run.saga_id)
        if live is not None:
            # Driven by another run than the one the stop was noted on (its driver started after the unit read
            # the saga): the stop is committed, so the live run learns it too.
            if live is not run and run.stop_reason and not live.stop_reason and live.status == RUNNING:
                live.stop_reason = run.stop_reason
            live.wake.set()
            return run.status
        # Nobody drives it (it had ended, its driver failed since, or it waits to be started): go on from the
        # records, the stop among them. Never from `run`: a driver may have run and ended since the unit read
        # it, or a unit of the saga's that failed may have left it ahead of what was committed.
        read = await self._drive_stored(run.saga_id)
        return run.status if read is None else read

    async def stop_forward(self, saga_id: str, reason: str, *, reopen: bool = True, note: str | None = None) -> str:
        """`request_stop` in a unit of its own, then `stopped`."""
        run = await self.db.write(lambda tx: self.request_stop(tx, saga_id, reason, reopen=reopen, note=note))
        return await self.stopped(run)

    # -- driving --------------------------------------------------------------

    async def _drive(self, run: SagaRun) -> None:
        started = time.monotonic()
        try:
            await self.db.published(run.settle_seq)
            async with self._slots:
                while run.status in ACTIVE:
                    if run.status == RUNNING:
                        await self._forward(run)
                    else:
                        await self._compensate(run)
        except asyncio.CancelledError:
            raise
        except Exception:
            retry_in = self._restart_later(run.saga_id)
            log.exception(
                "saga driver failed; it starts again from its stored state",
                extra={"saga_id": run.saga_id, "order_id": run.ref, "retry_in_s": round(retry_in, 3)},
            )
        else:
            self._driver_failures.pop(run.saga_id, None)
        finally:
            self._runs.pop(run.saga_id, None)
            run.done.set()
            if run.status not in ACTIVE:
                self.counts[run.status.lower()] += 1
            if self.metrics:
                self.metrics.sagas_in_flight.dec()
                if run.status not in ACTIVE:
                    outcome = run.status.lower()
                    self.metrics.child(self.metrics.sagas, outcome).inc()
                    self.metrics.child(self.metrics.saga_duration, outcome).observe(time.monotonic() - started)

    async def _forward(self, run: SagaRun) -> None:
        # From here on, a stop or a retry asked for cuts the backoff after this attempt short.
        run.wake.clear()
        if run.stop_reason:
            await self.db.write(lambda tx: self._begin_compensation(tx, run, run.stop_reason or "CANCELLED"))
            return
        if self.clock() >= run.deadline_at:
            await self.db.write(lambda tx: self._begin_compensation(tx, run, "DEADLINE_EXCEEDED"))
            return
        step = self.saga.steps[run.step_index]
        if step.local is not None:
            await self.db.write(lambda tx: self._run_local(tx, run, step))
            return
        assert step.invoke is not None
        if run.start_recorded:
            run.start_recorded = False
        else:
            await self.db.write(lambda tx: self._record_start(tx, run, step, "invoke", run.attempts + 1), settle=False)
            run.start_recorded = False
            if run.stop_reason:  # asked for while the attempt was being recorded: turn back before sending it
                return
        attempt = run.attempts
        began = time.monotonic()
        try:
            result = await self.send(
                step.invoke.route,
                step.invoke.payload(run.data),
                timeout_s=self.step_timeout_s,
                idempotency_key=f"{run.saga_id}:{step.name}:invoke",
            )
        except BusinessError as exc:
            self._count(step, exc.code)
            await self.db.write(lambda tx, e=exc: self._step_failed(tx, run, step, e, e.code, uncertain=False))
            return
        except OmsError as exc:
            self._count(step, exc.code)
            if not exc.retryable:
                await self.db.write(lambda tx, e=exc: self._step_failed(tx, run, step, e, e.code, uncertain=True))
                return
            await self._after_transient(run, step, exc, attempt)
            return
        refused = step.check(run.data, result) if step.check is not None else None
        if refused is not None:
            self._count(step, refused.code)
            log.error(
                "a participant's success does not answer the request; the step is undone",
                extra={"saga_id": run.saga_id, "order_id": run.ref, "step": step.name, "error": refused.message},
            )
            await self.db.write(lambda tx: self._step_failed(tx, run, step, refused, refused.code, uncertain=True))
            return
        self._count(step, "OK")
        elapsed_ms = (time.monotonic() - began) * 1000
        # Nothing is answered from this unit: it waits for its own events only (the last step's confirmation).
        await self.db.write(lambda tx: self._step_succeeded(tx, run, step, result, elapsed_ms), settle=False)

    async def _after_transient(self, run: SagaRun, step: Step, exc: OmsError, attempt: int) -> None:
        policy = step.retry or self.retry
        if isinstance(exc, BreakerOpen):
            # Nothing was sent: not an attempt, and the outcome is not in doubt.
            run.attempts = attempt - 1
            delay = float(exc.details.get("retry_in_s") or policy.backoff(max(1, attempt), self.rng))
        elif policy.exhausted(attempt):
            await self.db.write(lambda tx: self._step_failed(tx, run, step, exc, "RETRIES_EXHAUSTED", uncertain=True))
            return
        else:
            delay = policy.backoff(attempt, self.rng)
            self.counts["retries"] += 1
            if self.metrics:
                self.metrics.step_retries.labels(step.name).inc()
        delay = max(0.0, min(delay, run.deadline_at - self.clock()))
        retry_at = self.clock() + delay
        uncertain = not isinstance(exc, BreakerOpen)
        await self.db.commit(lambda tx: self._record_retry(tx, run, step, exc, retry_at, uncertain))
        await self._sleep(run, delay)

    async def _compensate(self, run: SagaRun) -> None:
        index = self._next_to_compensate(run)
        if index is None:
            final = CANCELLED if run.failure_reason in CANCEL_REASONS else FAILED
            await self.db.write(lambda tx: self._finish(tx, run, final))
            return
        step = self.saga.steps[index]
        assert step.compensate is not None
        run.step_index = index
        attempt = run.comp_failures + 1
        run.wake.clear()  # a retry asked for from here on cuts the backoff after this attempt short
        await self.db.commit(lambda tx: self._record_start(tx, run, step, "compensate", attempt))
        began = time.monotonic()
        try:
            await self.send(
                step.compensate.route,
                step.compensate.payload(run.data),
                timeout_s=self.step_timeout_s,
                idempotency_key=f"{run.saga_id}:{step.name}:compensate",
            )
        except OmsError as exc:
            if self.metrics:
                self.metrics.compensations.labels(step.name, exc.code).inc()
            run.comp_failures = attempt
            delay = self.comp_retry.backoff(attempt, self.rng)
            retry_at = self.clock() + delay
            await self.db.commit(lambda tx, e=exc: self._record_comp_failure(tx, run, step, e, retry_at))
            await self._sleep(run, delay)
            return
        self.counts["compensations"] += 1
        if self.metrics:
            self.metrics.compensations.labels(step.name, "OK").inc()
        elapsed_ms = (time.monotonic() - began) * 1000
        await self.db.commit(lambda tx: self._compensated(tx, run, step, elapsed_ms))

    async def _sleep(self, run: SagaRun, delay: float) -> None:
        """Wait out a backoff, or less: a stop or a retry asked for since the attempt began (while its request
        was out, too) ends it at once."""
        if not run.wake.is_set():
            try:
                async with asyncio.timeout(delay):
                    await run.wake.wait()
            except TimeoutError:
                pass
        run.wake.clear()

    def _count(self, step: Step, outcome: str) -> None:
        if self.metrics:
            self.metrics.child(self.metrics.step_attempts, step.name, outcome).inc()

    # -- units of work (run inside a group-committed batch) -------------------

    def _save(self, tx: Tx, run: SagaRun, **extra: Any) -> None:
        columns = {
            "status": run.status,
            "step_index": run.step_index,
            "attempts": run.attempts,
            "comp_failures": run.comp_failures,
            "failure_reason": run.failure_reason,
            "updated_at": self.clock(),
            "steps": run.steps_text(),
            **extra,
        }
        assignments = ", ".join(f"{name} = ?" for name in columns)
        tx.execute(f"UPDATE sagas SET {assignments} WHERE saga_id = ?", (*columns.values(), run.saga_id))

    def _record_start(
        self, tx: Tx, run: SagaRun, step: Step, action: str, attempt: int, *, persist: bool = True
    ) -> None:
        """Record an attempt before its request; `persist=False` when the caller writes the saga row."""
        now = self.clock()
        record = run.record(step.name, action)
        if record["started_at"] is None:
            record["started_at"] = now  # a record keeps the start of its first attempt
        record["status"], record["attempts"] = "RUNNING", attempt
        # A second attempt means the first was sent and never answered for sure (a timeout, or the
        # service died waiting): whatever the later attempts say, the step may have taken effect.
        record["uncertain"] = bool(record["uncertain"]) or (action == "invoke" and attempt > 1)
        if action == "invoke":
            run.attempts = attempt
            run.start_recorded = True
        if not persist:
            return
        if action == "invoke":
            tx.execute(
                "UPDATE sagas SET attempts = ?, next_retry_at = NULL, updated_at = ?, steps = ? WHERE saga_id = ?",
                (attempt, now, run.steps_text(), run.saga_id),
            )
        else:
            tx.execute(
                "UPDATE sagas SET updated_at = ?, steps = ? WHERE saga_id = ?", (now, run.steps_text(), run.saga_id)
            )

    def _step_succeeded(self, tx: Tx, run: SagaRun, step: Step, result: dict[str, Any], elapsed_ms: float) -> None:
        run.record(step.name, "invoke").update(
            status="SUCCEEDED", finished_at=self.clock(), duration_ms=elapsed_ms, last_error=None
        )
        if step.on_success is not None:
            step.on_success(tx, run, result)
        run.step_index += 1
        run.attempts = 0
        self._prepare(tx, run)
        finished = {"finished_at": self.clock()} if run.status == COMPLETED else {}
        self._save(tx, run, data=jsonb.text(run.data), last_error=None, next_retry_at=None, **finished)

    def _prepare(self, tx: Tx, run: SagaRun) -> None:
        """Start the next step in this same transaction: record a remote step's first attempt, or
        run a local step outright. Saves a commit per step; a stop or deadline waits for `_forward`.
        The caller saves the saga row afterwards."""
        if run.step_index >= len(self.saga.steps) or run.stop_reason or self.clock() >= run.deadline_at:
            return
        step = self.saga.steps[run.step_index]
        if step.local is not None:
            self._run_local(tx, run, step, persist=False)
        else:
            self._record_start(tx, run, step, "invoke", 1, persist=False)

    def _run_local(self, tx: Tx, run: SagaRun, step: Step, *, persist: bool = True) -> None:
        now = self.clock()
        assert step.local is not None
        step.local(tx, run)
        run.record(step.name, "invoke").update(
            status="SUCCEEDED",
            attempts=1,
            uncertain=False,
            started_at=now,
            finished_at=now,
            duration_ms=0,
            last_error=None,
        )
        run.step_index += 1
        run.attempts = 0
        if run.step_index >= len(self.saga.steps):
            run.status = COMPLETED
        if persist:
            finished = {"finished_at": now} if run.status == COMPLETED else {}
            self._save(tx, run, data=jsonb.text(run.data), **finished)

    def _step_failed(self, tx: Tx, run: SagaRun, step: Step, exc: OmsError, reason: str, *, uncertain: bool) -> None:
        record = run.record(step.name, "invoke")
        record.update(status="FAILED", finished_at=self.clock(), last_error=_error_json(exc))
        record["uncertain"] = bool(record["uncertain"]) or uncertain
        tx.emit(
            "step_failed",
            run.ref,
            # `uncertain`: the step may have taken effect and is compensated; a rebuild by replay needs to know.
            {
                "step": step.name,
                "attempt": run.attempts,
                "error": exc.code,
                "message": exc.message,
                "uncertain": bool(record["uncertain"]),
            },
            order_id=run.ref,
            saga_id=run.saga_id,
        )
        self._begin_compensation(tx, run, reason)

    def _record_retry(self, tx: Tx, run: SagaRun, step: Step, exc: OmsError, retry_at: float, uncertain: bool) -> None:
        record = run.record(step.name, "invoke")
        record.update(status="RETRYING", last_error=_error_json(exc), attempts=run.attempts)
        record["uncertain"] = bool(record["uncertain"]) or uncertain
        tx.execute(
            "UPDATE sagas SET attempts = ?, next_retry_at = ?, last_error = ?, updated_at = ?, steps = ?"
            " WHERE saga_id = ?",
            (run.attempts, retry_at, _error_json(exc), self.clock(), run.steps_text(), run.saga_id),
        )
        if uncertain:
            tx.emit(
                "step_retried",
                run.ref,
                {
                    "step": step.name,
                    "attempt": run.attempts,
                    "error": exc.code,
                    "message": exc.message,
                    "retry_in_ms": round((retry_at - self.clock()) * 1000),
                },
                order_id=run.ref,
                saga_id=run.saga_id,
            )

    def _begin_compensation(self, tx: Tx, run: SagaRun, reason: str, index: int | None = None) -> None:
        run.status = COMPENSATING
        run.failure_reason = reason
        run.attempts = 0
        run.comp_failures = 0
        if index is not None:
            run.step_index = index
        if self._next_to_compensate(run) is None:
            self._finish(tx, run, CANCELLED if reason in CANCEL_REASONS else FAILED)
            return
        self._save(tx, run, next_retry_at=None)
        self.saga.hooks.on_compensating(tx, run, reason)

    def _next_to_compensate(self, run: SagaRun) -> int | None:
        done = {step: r for (step, action), r in run.steps.items() if action == "invoke"}
        compensated = {
            step for (step, action), r in run.steps.items() if action == "compensate" and r["status"] == "SUCCEEDED"
        }
        # From the last step, not from step_index: a saga rebuilt by replay starts again at its first step
        # while later steps may already have taken effect (the rebuild records those as RUNNING).
        for index in range(len(self.saga.steps) - 1, -1, -1):
            step = self.saga.steps[index]
            record = done.get(step.name)
            if step.compensate is None or record is None or step.name in compensated:
                continue
            if record["status"] in ("SUCCEEDED", "RUNNING", "RETRYING") or record["uncertain"]:
                return index
        return None

    def _compensated(self, tx: Tx, run: SagaRun, step: Step, elapsed_ms: float) -> None:
        run.record(step.name, "compensate").update(
            status="SUCCEEDED", finished_at=self.clock(), duration_ms=elapsed_ms, last_error=None
        )
        tx.emit(
            "step_compensated",
            run.ref,
            {"step": step.name, "attempts": run.comp_failures + 1, "duration_ms": round(elapsed_ms, 2)},
            order_id=run.ref,
            saga_id=run.saga_id,
        )
        run.comp_failures = 0
        self._save(tx, run, last_error=None, next_retry_at=None)

    def _record_comp_failure(self, tx: Tx, run: SagaRun, step: Step, exc: OmsError, retry_at: float) -> None:
        run.record(step.name, "compensate").update(
            status="RETRYING", last_error=_error_json(exc), attempts=run.comp_failures
        )
        self._save(tx, run, last_error=_error_json(exc), next_retry_at=retry_at)
        if run.comp_failures in (1, self.settings.stuck_after_attempts):
            tx.emit(
                "compensation_retried",
                run.ref,
                {
                    "step": step.name,
                    "attempt": run.comp_failures,
                    "error": exc.code,
                    "message": exc.message,
                    "stuck": run.comp_failures >= self.settings.stuck_after_attempts,
                },
                order_id=run.ref,
                saga_id=run.saga_id,
            )

    def _finish(self, tx: Tx, run: SagaRun, status: str) -> None:
        run.status = status
        self._save(tx, run, finished_at=self.clock(), next_retry_at=None)
        self.saga.hooks.on_finished(tx, run, status, run.failure_reason)

    # -- views ----------------------------------------------------------------

    def view(self, tx: Tx, saga_id: str, *, with_steps: bool = True) -> SagaView | None:
        row = tx.one("SELECT * FROM sagas WHERE saga_id = ?", (saga_id,))
        return None if row is None else self._view(tx, row, with_steps)

    def list(
        self,
        tx: Tx,
        status: str | None,
        stuck: bool,
        limit: int,
        *,
        window: Window | None = None,
        data: dict[str, str] | None = None,
    ) -> list[SagaView]:
        """Newest first: saga ids begin with their creation time, so a `window` is a range of ids.
        `data`: only sagas whose data holds these values (the caller's domain: a customer, say)."""
        clauses, params = [], []
        if status:
            clauses.append("status = ?")
            params.append(status)
        if stuck:
            clauses.append("status IN ('RUNNING', 'COMPENSATING') AND comp_failures >= ?")
            params.append(self.settings.stuck_after_attempts)
        if window is not None:
            low, high = window.key_range("saga")
            bounds = (("saga_id < ?", window.before), ("saga_id > ?", window.after))
            for clause, value in (*bounds, ("saga_id >= ?", low), ("saga_id < ?", high)):
                if value is not None:
                    clauses.append(clause)
                    params.append(value)
        for name, value in (data or {}).items():
            clauses.append("json_extract(data, ?) = ?")
            params.extend((f"$.{name}", value))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = tx.all(f"SELECT * FROM sagas {where} ORDER BY saga_id DESC LIMIT ?", (*params, limit))
        return [self._view(tx, row, False) for row in rows]

    def _view(self, tx: Tx, row: Any, with_steps: bool) -> SagaView:
        steps: list[StepRecord] = []
        if with_steps:
            records = list(load_steps(row["steps"]).values())
            # By start; records without one (a rebuild's) or with the same one go in the saga's step order.
            position = {step.name: i for i, step in enumerate(self.saga.steps)}
            records.sort(key=lambda r: (r["started_at"] or 0, position.get(r["step"], 0), r["action"]))
            for r in records:
                steps.append(
                    StepRecord(
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
                )
        index = row["step_index"]
        return SagaView(
            saga_id=row["saga_id"],
            name=row["name"],
            ref=row["ref"],
            status=row["status"],
            failure_reason=row["failure_reason"],
            created_at=iso(row["created_at"]),
            updated_at=iso(row["updated_at"]),
            step=self.saga.steps[index].name if 0 <= index < len(self.saga.steps) else None,
            compensating=row["status"] == COMPENSATING,
            attempts=row["attempts"] if row["status"] == RUNNING else row["comp_failures"],
            deadline_at=iso(row["deadline_at"]),
            next_retry_at=iso(row["next_retry_at"]) if row["next_retry_at"] else None,
            last_error=jsonb.loads(row["last_error"]) if row["last_error"] else None,
            stuck=row["status"] in ACTIVE and row["comp_failures"] >= self.settings.stuck_after_attempts,
            steps=steps,
        )
