"""A saga's execution state: its statuses, its run (which step, which direction, its data) with the record
of each step's attempts, and the changes of them in memory. Nothing here writes SQL or events
(`bus.saga.transitions` saves each change with them).

The state is small, as in Eventuate: a step index and a direction (the status), plus what the step
records say about what may have taken effect. Records are kept as plain dicts (`StepRecord`) because
the run's row is written on every transition and pydantic-core writes a dict several times faster than
a dataclass; their status values are plain strings for the same reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypedDict, TypeVar

from bus import jsonb

D = TypeVar("D")


class SagaStatus(StrEnum):
    RUNNING = "RUNNING"  # forward, one step after another
    COMPENSATING = "COMPENSATING"  # backward, undoing what may have taken effect
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ACTIVE = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})


class StepStatus(StrEnum):
    RUNNING = "RUNNING"  # its request is out (or about to be), or a rebuild could not tell its outcome
    RETRYING = "RETRYING"  # it failed transiently and waits for its next attempt
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class ActionKind(StrEnum):
    """What a step record is of: the step's request, or its undoing."""

    INVOKE = "invoke"
    COMPENSATE = "compensate"


# What the records hold: the values as plain strings (see the module's docstring), looked up once.
_RUNNING, _RETRYING, _SUCCEEDED, _FAILED = (status.value for status in StepStatus)


class Reason(StrEnum):
    """Why a saga turns back, when it is not a participant's error code (`failure_reason`, `stop_reason`)."""

    CANCELLED = "CANCELLED"  # a cancel: the saga ends CANCELLED, not FAILED
    ABORTED = "ABORTED"  # an operator's abort
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"


class StepRecord(TypedDict):
    """One step's action as it went: saved in its saga's row (`steps`, a JSON list) and shown by views."""

    step: str
    action: str  # an ActionKind's value
    status: str  # a StepStatus's value
    attempts: int
    uncertain: bool  # the action may have taken effect though no success was heard: it is compensated
    started_at: float | None  # of its first attempt
    finished_at: float | None
    duration_ms: float | None
    last_error: str | None  # JSON text, {"code", "message"}


@dataclass
class SagaRun(Generic[D]):
    """A saga's execution state: which step, which direction, and its data (the saga's own model)."""

    saga_id: str
    name: str
    ref: str  # what the saga is for (the order id): the key of its events
    status: SagaStatus
    step_index: int
    data: D
    deadline_at: float
    attempts: int = 0  # of the current step, forward
    comp_failures: int = 0  # failed attempts of the current compensation
    failure_reason: str | None = None
    stop_reason: str | None = None  # a cancel or an abort asked for, honoured at the next step boundary
    created_at: float = 0.0
    start_recorded: bool = False  # the current step's attempt was recorded with the previous outcome
    sends_after_seq: int = 0  # the outbox sequence JetStream must have acknowledged before the saga sends
    # Its step records by (step, action), in the order they began: saved with the saga row (`steps`).
    steps: dict[tuple[str, str], StepRecord] = field(default_factory=dict, repr=False)
    result: Any = field(default=None, repr=False)  # what the hooks leave for a waiter once the saga ends
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def record(self, step: str, action: ActionKind) -> StepRecord:
        """The step record of `action` on `step`, begun now if there is none."""
        found = self.steps.get((step, action))
        if found is None:
            kind = action._value_
            found = self.steps[(step, kind)] = {
                "step": step,
                "action": kind,
                "status": _RUNNING,
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

    def invoked(self) -> list[StepRecord]:
        """The records of the steps' requests, by when they began."""
        records = [r for (_, action), r in self.steps.items() if action == ActionKind.INVOKE]
        return sorted(records, key=lambda r: r["started_at"] or 0.0)

    # -- changes --------------------------------------------------------------

    def attempt_begins(self, step: str, action: ActionKind, attempt: int, now: float) -> None:
        """An attempt is recorded before its request goes out."""
        record = self.record(step, action)
        if record["started_at"] is None:
            record["started_at"] = now  # a record keeps the start of its first attempt
        record["status"], record["attempts"] = _RUNNING, attempt
        # A second attempt means the first was sent and never answered for sure (a timeout, or the
        # service died waiting): whatever the later attempts say, the step may have taken effect.
        record["uncertain"] = bool(record["uncertain"]) or (action is ActionKind.INVOKE and attempt > 1)
        if action is ActionKind.INVOKE:
            self.attempts = attempt
            self.start_recorded = True

    def succeeded(self, step: str, action: ActionKind, now: float, elapsed_ms: float) -> None:
        self.record(step, action).update(status=_SUCCEEDED, finished_at=now, duration_ms=elapsed_ms, last_error=None)

    def ran_locally(self, step: str, now: float) -> None:
        """A local step ran, in the unit of work that records it: one attempt, no time."""
        self.record(step, ActionKind.INVOKE).update(
            status=_SUCCEEDED,
            attempts=1,
            uncertain=False,
            started_at=now,
            finished_at=now,
            duration_ms=0,
            last_error=None,
        )

    def advance(self, steps: int) -> None:
        """On to the next of the saga's `steps` steps; past the last one the saga has completed."""
        self.step_index += 1
        self.attempts = 0
        if self.step_index >= steps:
            self.status = SagaStatus.COMPLETED

    def failed(self, step: str, now: float, error: str, *, uncertain: bool) -> StepRecord:
        record = self.record(step, ActionKind.INVOKE)
        record.update(status=_FAILED, finished_at=now, last_error=error)
        record["uncertain"] = bool(record["uncertain"]) or uncertain
        return record

    def retrying(self, step: str, action: ActionKind, error: str, attempts: int, *, uncertain: bool) -> None:
        record = self.record(step, action)
        record.update(status=_RETRYING, last_error=error, attempts=attempts)
        record["uncertain"] = bool(record["uncertain"]) or uncertain

    def turns_back(self, reason: str, index: int | None = None) -> None:
        """Compensation begins (from `index`, a completed saga reopened, or where it is)."""
        self.status = SagaStatus.COMPENSATING
        self.failure_reason = reason
        self.attempts = 0
        self.comp_failures = 0
        if index is not None:
            self.step_index = index

    def next_to_compensate(self, compensable: list[tuple[int, str]]) -> int | None:
        """The index of the last step that succeeded or might have and is not compensated yet; of the
        saga's `compensable` steps (index, name), in their order."""
        compensated = {
            step
            for (step, action), r in self.steps.items()
            if action == ActionKind.COMPENSATE and r["status"] == StepStatus.SUCCEEDED
        }
        # From the last step, not from step_index: a saga rebuilt by replay starts again at its first step
        # while later steps may already have taken effect (the rebuild records those as RUNNING).
        for index, name in reversed(compensable):
            record = self.steps.get((name, ActionKind.INVOKE))
            if record is None or name in compensated:
                continue
            if record["status"] != StepStatus.FAILED or record["uncertain"]:
                return index
        return None

    def ending(self) -> SagaStatus:
        """How a saga that has nothing left to compensate ends."""
        return SagaStatus.CANCELLED if self.failure_reason == Reason.CANCELLED else SagaStatus.FAILED


def error_text(code: str | None, message: str | None) -> str:
    """A step record's (and a saga's) `last_error`."""
    return jsonb.text({"code": code, "message": message})


def load_steps(text: str | None) -> dict[tuple[str, str], StepRecord]:
    return {(r["step"], r["action"]): r for r in jsonb.loads(text)} if text else {}
