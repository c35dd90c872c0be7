"""Rebuilding sagas from events: the projections of the engine's own events (`bus.saga.events`), and what
the owner's projections call to move a saga as its own events tell (created, turned back, completed,
ended, asked to stop).

A rebuilt saga's step records are assembled in `saga_steps` as the events come (their times are the
events' times) and folded into their sagas at the end (`after_replay`). The owner's events do not say
which participant steps took effect (the happy path records them in the participants' events), so
`after_replay` makes every step an unfinished saga might have run count as started: a RUNNING saga starts
again at its first step and re-sends each step with the same idempotency key, and a COMPENSATING saga
re-sends every compensation. Participants answer both idempotently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from bus import jsonb
from bus.contract import Event
from bus.errors import Conflict, InvalidRequest, NotFound, OutOfStock, PaymentDeclined
from bus.ids import parse_iso
from bus.saga import repo
from bus.saga.definition import Saga
from bus.saga.events import CompensationRetried, StepCompensated, StepFailed, StepRetried
from bus.saga.state import ActionKind, SagaStatus, StepStatus, error_text
from bus.settings import SagaSettings
from bus.unit import Tx

D = TypeVar("D", bound=BaseModel)

# A step that failed with one of these got a final answer: the participant did nothing to undo.
FINAL_CODES = frozenset(e.code for e in (InvalidRequest, PaymentDeclined, NotFound, Conflict, OutOfStock))


class SagaReplay(Generic[D]):
    """A saga definition's side of a rebuild."""

    def __init__(self, saga: Saga[D]) -> None:
        self.saga = saga
        self.steps = tuple(step.name for step in saga.steps)
        self.local = frozenset(step.name for step in saga.steps if step.local is not None)
        self.compensable = [name for _, name in saga.compensable]
        self._projections: dict[str, Callable[[Tx, Event, float], None]] = {
            StepRetried.TYPE: self._step_retried,
            StepFailed.TYPE: self._step_failed,
            CompensationRetried.TYPE: self._compensation_retried,
            StepCompensated.TYPE: self._step_compensated,
        }

    def apply(self, tx: Tx, event: Event) -> bool:
        """Replay the event if it is one of the engine's; False if it is not. Each definition's replay moves
        its own runs only (an owner with several sagas hands every event to each)."""
        project = self._projections.get(event.type)
        if project is None:
            return False
        if event.saga_id and repo.name_of(tx, event.saga_id) == self.saga.name:
            project(tx, event, parse_iso(event.occurred_at))
        return True

    # -- what the owner's events tell ----------------------------------------------

    def status(self, tx: Tx, saga_id: str) -> SagaStatus | None:
        """The saga's status now; each projection acts only from the states its event can follow."""
        return repo.status(tx, saga_id)

    def data(self, tx: Tx, saga_id: str) -> D | None:
        return repo.data_of(tx, saga_id, self.saga.data)

    def created(self, tx: Tx, saga_id: str, ref: str, data: D, created: float) -> None:
        repo.rebuilt(tx, saga_id, self.saga.name, ref, data, created)

    def stop_asked(self, tx: Tx, saga_id: str, reason: str) -> None:
        """The saga turns back at its next step boundary, as it would have (the first stop asked for wins)."""
        repo.stop_noted(tx, saga_id, reason)

    def turned_back(self, tx: Tx, saga_id: str, reason: str, data: D | None, at: float, *, reopened: bool) -> None:
        """Compensating; a completed saga (a confirmed order cancelled) from its last step."""
        columns: dict[str, Any] = {"status": SagaStatus.COMPENSATING, "failure_reason": reason}
        if reopened:
            columns["step_index"] = len(self.steps) - 1
        columns |= {"attempts": 0, "comp_failures": 0, "next_retry_at": None}
        repo.replayed(tx, saga_id, at, **columns, **_data(data))

    def completed(self, tx: Tx, saga_id: str, told: Mapping[str, Mapping[str, Any]], data: D | None, at: float) -> None:
        """Every step succeeded, with the attempts and durations `told` by step (a local step's: one, none)."""
        for name in self.steps:
            step = told.get(name, {"attempts": 1, "duration_ms": 0} if name in self.local else None)
            if step is not None:
                repo.put_record(
                    tx,
                    saga_id,
                    name,
                    ActionKind.INVOKE,
                    StepStatus.SUCCEEDED,
                    at,
                    attempts=step["attempts"],
                    duration_ms=step["duration_ms"],
                )
        repo.replayed(
            tx,
            saga_id,
            at,
            status=SagaStatus.COMPLETED,
            step_index=len(self.steps),
            attempts=0,
            **_data(data),
            last_error=None,
            next_retry_at=None,
            finished_at=at,
        )

    def ended(self, tx: Tx, saga_id: str, status: SagaStatus, reason: str | None, at: float) -> None:
        repo.replayed(
            tx,
            saga_id,
            at,
            status=status,
            failure_reason=reason,
            attempts=0,
            comp_failures=0,
            next_retry_at=None,
            finished_at=at,
        )

    def prepare_resume(self, tx: Tx, settings: SagaSettings) -> None:
        """Deadlines from the creation time; every step an unfinished run might have run counts as started
        (the step records are then folded into their rows, once for every definition: `after_replay`)."""
        repo.deadlines_from_creation(tx, self.saga.name, self.saga.deadline(settings))
        for saga_id, status in repo.unfinished_ids(tx, self.saga.name):
            running = status == SagaStatus.RUNNING
            if running:
                repo.restart_forward(tx, saga_id)
            else:
                repo.restart_backward(tx, saga_id, len(self.steps) - 1)
            # A RUNNING step is compensated if the saga has to turn back; a step that then fails with a
            # final answer is not. A compensating saga re-sends every compensation (they are idempotent).
            repo.maybe_started(tx, saga_id, self.compensable, uncertain=not running)

    # -- the engine's events ------------------------------------------------------------

    def _step_retried(self, tx: Tx, e: Event, at: float) -> None:
        assert e.saga_id is not None
        if repo.status(tx, e.saga_id) != SagaStatus.RUNNING:
            return
        d = StepRetried.model_validate(e.data)
        error = error_text(d.error, d.message)
        self._earlier_succeeded(tx, e.saga_id, d.step, at)
        repo.put_record(
            tx,
            e.saga_id,
            d.step,
            ActionKind.INVOKE,
            StepStatus.RETRYING,
            at,
            attempts=d.attempt,
            uncertain=1,
            error=error,
        )
        repo.replayed(tx, e.saga_id, at, step_index=self.saga.position[d.step], attempts=d.attempt, last_error=error)

    def _step_failed(self, tx: Tx, e: Event, at: float) -> None:
        assert e.saga_id is not None
        if repo.status(tx, e.saga_id) != SagaStatus.RUNNING:
            return
        d = StepFailed.model_validate(e.data)
        self._earlier_succeeded(tx, e.saga_id, d.step, at)
        # Events since `uncertain` was added say whether the step may have taken effect (a success refused by
        # the saga's check did, with a final code); earlier ones leave it to the code.
        uncertain = int(d.uncertain if d.uncertain is not None else d.error not in FINAL_CODES)
        repo.put_record(
            tx,
            e.saga_id,
            d.step,
            ActionKind.INVOKE,
            StepStatus.FAILED,
            at,
            attempts=d.attempt,
            uncertain=uncertain,
            error=error_text(d.error, d.message),
        )
        repo.replayed(tx, e.saga_id, at, step_index=self.saga.position[d.step])

    def _compensation_retried(self, tx: Tx, e: Event, at: float) -> None:
        assert e.saga_id is not None
        if repo.status(tx, e.saga_id) != SagaStatus.COMPENSATING:
            return
        d = CompensationRetried.model_validate(e.data)
        error = error_text(d.error, d.message)
        repo.put_record(
            tx, e.saga_id, d.step, ActionKind.COMPENSATE, StepStatus.RETRYING, at, attempts=d.attempt, error=error
        )
        repo.replayed(
            tx, e.saga_id, at, step_index=self.saga.position[d.step], comp_failures=d.attempt, last_error=error
        )

    def _step_compensated(self, tx: Tx, e: Event, at: float) -> None:
        assert e.saga_id is not None
        if repo.status(tx, e.saga_id) != SagaStatus.COMPENSATING:
            return
        d = StepCompensated.model_validate(e.data)
        # The engine keeps the last failed attempt's error on a compensation that then succeeded.
        repo.put_record(
            tx,
            e.saga_id,
            d.step,
            ActionKind.COMPENSATE,
            StepStatus.SUCCEEDED,
            at,
            attempts=d.attempts,
            duration_ms=d.duration_ms,
            keep_error=True,
        )
        repo.replayed(tx, e.saga_id, at, step_index=self.saga.position[d.step], comp_failures=0, last_error=None)

    def _earlier_succeeded(self, tx: Tx, saga_id: str, step: str, at: float) -> None:
        """A saga only reaches a step after every step before it succeeded."""
        for name in self.steps[: self.saga.position[step]]:
            found = repo.step_record(tx, saga_id, name)
            if found is None or found["status"] != StepStatus.SUCCEEDED:
                # After n retried attempts, attempt n + 1 was the one that succeeded.
                attempts = found["attempts"] + 1 if found is not None and found["status"] == StepStatus.RETRYING else 1
                repo.put_record(tx, saga_id, name, ActionKind.INVOKE, StepStatus.SUCCEEDED, at, attempts=attempts)


def _data(data: BaseModel | None) -> dict[str, Any]:
    return {} if data is None else {"data": jsonb.text(data)}


def after_replay(tx: Tx, settings: SagaSettings, *replays: SagaReplay[Any]) -> None:
    """What the events cannot tell, for every saga definition of an owner (their deadlines, the steps an
    unfinished run sends again); then each saga's step records move into its row."""
    for replay in replays:
        replay.prepare_resume(tx, settings)
    repo.fold_steps(tx)
