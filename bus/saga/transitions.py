"""Each transition of a saga as a unit of work: the run's change (`bus.saga.state`), its row
(`bus.saga.repo`), its events (`bus.saga.events`) and the owner's hooks, in one transaction.

The driver (`bus.saga.driver`) runs them through `Database.run`; a cancel or an abort runs
`request_stop` inside the caller's own unit of work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from bus import jsonb
from bus.errors import OmsError
from bus.saga import events, repo
from bus.saga.definition import Saga, Step
from bus.saga.state import ActionKind, SagaRun, SagaStatus, error_text
from bus.settings import SagaSettings
from bus.unit import Tx

D = TypeVar("D", bound=BaseModel)


def error_of(exc: BaseException) -> str:
    """What a record and its saga keep of an error: its code and message; of anything else its type only."""
    if isinstance(exc, OmsError):
        return error_text(exc.code, exc.message)
    return error_text("INTERNAL", type(exc).__name__)


class Transitions(Generic[D]):
    """The units of work of one saga definition's runs."""

    def __init__(self, saga: Saga[D], settings: SagaSettings, clock: Callable[[], float]) -> None:
        self.saga = saga
        self.settings = settings
        self.clock = clock

    def create(self, tx: Tx, saga_id: str, ref: str, data: D) -> SagaRun[D]:
        """A new run, its first request recorded as about to go out; inserted in the caller's unit."""
        now = self.clock()
        deadline_at = now + self.saga.deadline(self.settings)
        run = SagaRun(saga_id, self.saga.name, ref, SagaStatus.RUNNING, 0, data, deadline_at)
        run.created_at = now
        if self.saga.steps and self.saga.steps[0].invoke is not None:
            run.attempt_begins(self.saga.steps[0].name, ActionKind.INVOKE, 1, now)
        repo.insert(tx, run)
        return run

    def record_start(self, tx: Tx, run: SagaRun[D], step: Step[D], action: ActionKind, attempt: int) -> None:
        """Record an attempt before its request."""
        now = self.clock()
        run.attempt_begins(step.name, action, attempt, now)
        repo.save_attempt(tx, run, action, now)

    def step_succeeded(self, tx: Tx, run: SagaRun[D], step: Step[D], reply: Any, elapsed_ms: float) -> None:
        run.succeeded(step.name, ActionKind.INVOKE, self.clock(), elapsed_ms)
        if step.on_success is not None:
            step.on_success(tx, run, reply)
        run.advance(len(self.saga.steps))
        self._prepare(tx, run)
        finished = {"finished_at": self.clock()} if run.status == SagaStatus.COMPLETED else {}
        repo.save(tx, run, self.clock(), data=run_data(run), last_error=None, next_retry_at=None, **finished)

    def _prepare(self, tx: Tx, run: SagaRun[D]) -> None:
        """Start the next step in this same transaction: record a remote step's first attempt, or run a
        local step outright. Saves a commit per step; a stop or deadline waits for the driver. The caller
        saves the saga row afterwards."""
        if run.status != SagaStatus.RUNNING or run.stop_reason or self.clock() >= run.deadline_at:
            return
        step = self.saga.steps[run.step_index]
        if step.local is not None:
            self._local(tx, run, step)
        else:
            run.attempt_begins(step.name, ActionKind.INVOKE, 1, self.clock())

    def run_local(self, tx: Tx, run: SagaRun[D], step: Step[D]) -> None:
        now = self._local(tx, run, step)
        finished = {"finished_at": now} if run.status == SagaStatus.COMPLETED else {}
        repo.save(tx, run, self.clock(), data=run_data(run), **finished)

    def _local(self, tx: Tx, run: SagaRun[D], step: Step[D]) -> float:
        now = self.clock()
        assert step.local is not None
        step.local(tx, run)
        run.ran_locally(step.name, now)
        run.advance(len(self.saga.steps))
        return now

    def step_failed(
        self, tx: Tx, run: SagaRun[D], step: Step[D], exc: OmsError, reason: str, *, uncertain: bool
    ) -> None:
        record = run.failed(step.name, self.clock(), error_of(exc), uncertain=uncertain)
        failed = events.StepFailed(
            step=step.name, attempt=run.attempts, error=exc.code, message=exc.message, uncertain=record["uncertain"]
        )
        events.emit(tx, run, failed)
        self.begin_compensation(tx, run, reason)

    def record_retry(
        self, tx: Tx, run: SagaRun[D], step: Step[D], exc: OmsError, retry_at: float, *, uncertain: bool
    ) -> None:
        run.retrying(step.name, ActionKind.INVOKE, error_of(exc), run.attempts, uncertain=uncertain)
        repo.save_retry(tx, run, self.clock(), retry_at, error_of(exc))
        if uncertain:
            retry_in_ms = round((retry_at - self.clock()) * 1000)
            retried = events.StepRetried(
                step=step.name, attempt=run.attempts, error=exc.code, message=exc.message, retry_in_ms=retry_in_ms
            )
            events.emit(tx, run, retried)

    def begin_compensation(self, tx: Tx, run: SagaRun[D], reason: str, index: int | None = None) -> None:
        run.turns_back(reason, index)
        if run.next_to_compensate(self.saga.compensable) is None:
            self.finish(tx, run, run.ending())
            return
        repo.save(tx, run, self.clock(), next_retry_at=None)
        self.saga.hooks.on_compensating(tx, run, reason)

    def compensated(self, tx: Tx, run: SagaRun[D], step: Step[D], elapsed_ms: float) -> None:
        run.succeeded(step.name, ActionKind.COMPENSATE, self.clock(), elapsed_ms)
        undone = events.StepCompensated(
            step=step.name, attempts=run.comp_failures + 1, duration_ms=round(elapsed_ms, 2)
        )
        events.emit(tx, run, undone)
        run.comp_failures = 0
        repo.save(tx, run, self.clock(), last_error=None, next_retry_at=None)

    def record_comp_failure(self, tx: Tx, run: SagaRun[D], step: Step[D], exc: OmsError, retry_at: float) -> None:
        run.retrying(step.name, ActionKind.COMPENSATE, error_of(exc), run.comp_failures, uncertain=False)
        repo.save(tx, run, self.clock(), last_error=error_of(exc), next_retry_at=retry_at)
        stuck_after = self.settings.stuck_after_attempts
        if run.comp_failures in (1, stuck_after):
            retried = events.CompensationRetried(
                step=step.name,
                attempt=run.comp_failures,
                error=exc.code,
                message=exc.message,
                stuck=run.comp_failures >= stuck_after,
            )
            events.emit(tx, run, retried)

    def finish(self, tx: Tx, run: SagaRun[D], status: SagaStatus) -> None:
        run.status = status
        repo.save(tx, run, self.clock(), finished_at=self.clock(), next_retry_at=None)
        self.saga.hooks.on_finished(tx, run, status, run.failure_reason)

    def stop(self, tx: Tx, run: SagaRun[D], found: Any, reason: str, *, reopen: bool, note: str | None) -> None:
        """A cancel or an abort of a saga whose row is `found`: a running saga turns back at its next step
        boundary (the first stop asked for wins), a completed one is reopened and compensated when `reopen`."""
        status = found["status"]
        if status == SagaStatus.RUNNING and not found["stop_reason"]:
            repo.note_stop(tx, run.saga_id, reason, self.clock())
            run.stop_reason = reason
            # A state change like any other: its event lets a rebuild by replay turn the saga back too.
            self.saga.hooks.on_stop_requested(tx, run, reason, note)
        elif status == SagaStatus.COMPLETED and reopen:
            run.status = SagaStatus.RUNNING  # so that the transition below is the normal one
            self.begin_compensation(tx, run, reason, index=len(self.saga.steps) - 1)


def run_data(run: SagaRun[Any]) -> str:
    return jsonb.text(run.data)
