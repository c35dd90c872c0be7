"""The events a saga's engine writes of its own, as models: a step retried after an answer in doubt, a step
failed, a compensation done or retried. The happy path has none (a step's start, attempt and duration ride
in the owner's event of the outcome, design section 3); a rebuild by replay reads these back
(`bus.saga.replay`)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from bus.saga.state import SagaRun
from bus.unit import Tx


class SagaEvent(BaseModel):
    """An event's `data`; readers ignore fields they do not know, and events from before a field have
    its default."""

    model_config = ConfigDict(extra="ignore")
    TYPE: ClassVar[str]

    step: str


class StepRetried(SagaEvent):
    """A step's attempt failed transiently and may have taken effect: it is sent again."""

    TYPE = "step_retried"
    attempt: int
    error: str | None = None
    message: str | None = None
    retry_in_ms: int | None = None


class StepFailed(SagaEvent):
    """A step failed for good: the saga turns back."""

    TYPE = "step_failed"
    attempt: int
    error: str | None = None
    message: str | None = None
    # The step may have taken effect and is compensated (a rebuild by replay needs to know); None in
    # events from before the field: the error's code tells.
    uncertain: bool | None = None


class StepCompensated(SagaEvent):
    TYPE = "step_compensated"
    attempts: int
    duration_ms: float | None = None


class CompensationRetried(SagaEvent):
    """A compensation failed; written at its first failure and when it becomes stuck."""

    TYPE = "compensation_retried"
    attempt: int
    error: str | None = None
    message: str | None = None
    stuck: bool = False


TYPES: dict[str, type[SagaEvent]] = {e.TYPE: e for e in (StepRetried, StepFailed, StepCompensated, CompensationRetried)}


def emit(tx: Tx, run: SagaRun[Any], event: SagaEvent) -> None:
    """Write `event` for `run` in the unit of work, on the subject of what the saga is for."""
    tx.emit(event.TYPE, run.ref, event.model_dump(), order_id=run.ref, saga_id=run.saga_id)
