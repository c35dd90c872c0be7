"""A saga declared as data: its steps, each a request to a participant (with its undoing) or a local change,
the retry policy of their requests, and the hooks through which its owner follows it.

    PLACE_ORDER = Saga(
        "place_order",
        PlaceOrderData,
        Step("reserve_stock", invoke=Action(INVENTORY_RESERVE, reserve_cmd), compensate=..., check=...),
        Step("confirm_order", local=confirm_order),
        hooks=OrderHooks(),
    )

A saga's data is a pydantic model of the owner's (`D`): the commands are built from it, the hooks change
it, and it is saved with the saga's row as JSON. A participant's answer reaches `check` and `on_success`
as the reply model its route declares.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from bus.errors import OmsError
from bus.idempotency import saga_key
from bus.saga.state import ActionKind, SagaRun
from bus.settings import SagaSettings
from bus.subjects import Route
from bus.unit import Tx

D = TypeVar("D", bound=BaseModel)


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
class Action(Generic[D]):
    """A request to a participant: its route, and its command built from the saga's data."""

    route: Route
    command: Callable[[D], BaseModel]


@dataclass(frozen=True)
class Step(Generic[D]):
    name: str
    invoke: Action[D] | None = None
    compensate: Action[D] | None = None  # registered with the step: it runs if the step may have taken effect
    local: Callable[[Tx, SagaRun[D]], None] | None = None  # a change of the owner's own, in the saga's unit
    # Whether a participant's success answers what was asked (given the saga's data and the reply): an
    # error here fails the step, and what the participant did is compensated like any step that took effect.
    check: Callable[[D, Any], OmsError | None] | None = None
    on_success: Callable[[Tx, SagaRun[D], Any], None] | None = None  # with the reply, in the step's unit
    retry: RetryPolicy | None = None


class SagaHooks(Protocol):
    """What the owning service does, in the same unit of work, when a saga changes course."""

    def on_stop_requested(self, tx: Tx, run: SagaRun[Any], reason: str, note: str | None) -> None: ...
    def on_compensating(self, tx: Tx, run: SagaRun[Any], reason: str) -> None: ...
    def on_finished(self, tx: Tx, run: SagaRun[Any], status: str, reason: str | None) -> None: ...


@dataclass(slots=True)
class StepCall:
    """One request of a step to its participant, with the facts about it: what it is for, the key that
    makes it safe to send again (`{saga_id}:{step}:{action}`, design decision 5), and the model to read
    its answer as (its route's reply for a step's request; a compensation's answer is not looked at)."""

    route: Route
    command: BaseModel
    saga_id: str
    step: str
    action: ActionKind
    timeout_s: float
    reply: type[BaseModel] | None

    @property
    def idempotency_key(self) -> str:
        return saga_key(self.saga_id, self.step, self.action._value_)


# Sends a step's request; returns its participant's answer as `call.reply` (raising BadReply for a success
# that does not fit it), or raises what the client raises (bus.errors).
Send = Callable[[StepCall], Awaitable[Any]]


# Every definition's step names by saga name, so a view of any saga names its step (an owner runs several).
_STEP_NAMES: dict[str, tuple[str, ...]] = {}


def step_names(saga_name: str) -> tuple[str, ...] | None:
    return _STEP_NAMES.get(saga_name)


class Saga(Generic[D]):
    """A saga definition: its name, the model of its data, its steps in order, and its owner's hooks."""

    def __init__(
        self, name: str, data: type[D], *steps: Step[D], hooks: SagaHooks, deadline_s: float | None = None
    ) -> None:
        self.name = name
        self.data = data
        self.steps = steps
        self.hooks = hooks
        # How long a run may go forward before it turns back; None: the settings' (`OMS_SAGA__DEADLINE_MS`).
        self.deadline_s = deadline_s
        _STEP_NAMES[name] = tuple(step.name for step in steps)

    def deadline(self, s: SagaSettings) -> float:
        return self.deadline_s if self.deadline_s is not None else s.deadline_ms / 1000

    @cached_property
    def position(self) -> dict[str, int]:
        return {step.name: index for index, step in enumerate(self.steps)}

    @cached_property
    def compensable(self) -> list[tuple[int, str]]:
        """The steps with a compensation, (index, name), in the saga's order."""
        return [(index, step.name) for index, step in enumerate(self.steps) if step.compensate is not None]

    def with_hooks(self, hooks: SagaHooks) -> Saga[D]:
        """The same saga followed by other hooks (a test's)."""
        return Saga(self.name, self.data, *self.steps, hooks=hooks, deadline_s=self.deadline_s)
