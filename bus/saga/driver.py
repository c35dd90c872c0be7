"""Driving one saga: its next step forward, or its next compensation back, each a request sent with its
step's key between two units of work (the attempt recorded before, the outcome after).

Forward, a transient error (timeout, no responders, UNAVAILABLE, breaker open) is an unknown outcome:
the step is sent again, with the same key, after a backoff, until its attempts or the saga's deadline run
out. A business error is final and turns the saga back at once. A success comes as the route's reply
model and is checked against what was asked (`Step.check`); a success that is not that model (BadReply),
or does not answer the request, fails the step with CONFLICT like an error whose outcome is in doubt: what
the participant did is undone.

Backward, each compensation is retried with capped backoff until it succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Generic, TypeVar

from pydantic import BaseModel

from bus.db import Acked, Database
from bus.errors import BadReply, BreakerOpen, BusinessError, Conflict, OmsError
from bus.metrics import Metrics
from bus.saga.definition import Action, RetryPolicy, Saga, Send, Step, StepCall
from bus.saga.state import ActionKind, Reason, SagaRun
from bus.saga.transitions import Transitions
from bus.settings import SagaSettings

log = logging.getLogger(__name__)
D = TypeVar("D", bound=BaseModel)


class Driver(Generic[D]):
    """Moves the runs of one saga definition one step at a time (the engine decides which runs, and when)."""

    def __init__(
        self,
        db: Database,
        saga: Saga[D],
        send: Send,
        transitions: Transitions[D],
        settings: SagaSettings,
        *,
        counts: Counter[str],
        metrics: Metrics | None,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.db = db
        self.saga = saga
        self.send = send
        self.transitions = transitions
        self.counts = counts
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        self.step_timeout_s = settings.step_timeout_ms / 1000
        self.retry = RetryPolicy.from_settings(settings)
        self.comp_retry = RetryPolicy.from_settings(settings, forever=True)

    async def forward(self, run: SagaRun[D]) -> None:
        t = self.transitions
        # From here on, a stop or a retry asked for cuts the backoff after this attempt short.
        run.wake.clear()
        if run.stop_reason:
            await self.db.run(lambda tx: t.begin_compensation(tx, run, run.stop_reason or Reason.CANCELLED))
            return
        if self.clock() >= run.deadline_at:
            await self.db.run(lambda tx: t.begin_compensation(tx, run, Reason.DEADLINE_EXCEEDED))
            return
        step = self.saga.steps[run.step_index]
        if step.local is not None:
            await self.db.run(lambda tx: t.run_local(tx, run, step))
            return
        assert step.invoke is not None
        if run.start_recorded:
            run.start_recorded = False
        else:
            await self.db.run(
                lambda tx: t.record_start(tx, run, step, ActionKind.INVOKE, run.attempts + 1), wait=Acked.OWN
            )
            run.start_recorded = False
            if run.stop_reason:  # asked for while the attempt was being recorded: turn back before sending it
                return
        attempt = run.attempts
        began = time.monotonic()
        refused: OmsError | None = None
        try:
            reply = await self.send(self._call(run, step, step.invoke, ActionKind.INVOKE))
        except BadReply as exc:
            reply, refused = None, Conflict(exc.message, {"step": step.name})
        except BusinessError as exc:
            self._count(step, exc.code)
            await self.db.run(lambda tx, e=exc: t.step_failed(tx, run, step, e, e.code, uncertain=False))
            return
        except OmsError as exc:
            self._count(step, exc.code)
            if not exc.retryable:
                await self.db.run(lambda tx, e=exc: t.step_failed(tx, run, step, e, e.code, uncertain=True))
                return
            await self._after_transient(run, step, exc, attempt)
            return
        if refused is None and step.check is not None:
            refused = step.check(run.data, reply)
        if refused is not None:
            self._count(step, refused.code)
            log.error(
                "a participant's success does not answer the request; the step is undone",
                extra={"saga_id": run.saga_id, "order_id": run.ref, "step": step.name, "error": refused.message},
            )
            await self.db.run(lambda tx: t.step_failed(tx, run, step, refused, refused.code, uncertain=True))
            return
        self._count(step, "OK")
        elapsed_ms = (time.monotonic() - began) * 1000
        # Nothing is answered from this unit: it waits for its own events only (the last step's confirmation).
        await self.db.run(lambda tx: t.step_succeeded(tx, run, step, reply, elapsed_ms), wait=Acked.OWN)

    async def _after_transient(self, run: SagaRun[D], step: Step[D], exc: OmsError, attempt: int) -> None:
        policy = step.retry or self.retry
        if isinstance(exc, BreakerOpen):
            # Nothing was sent: not an attempt, and the outcome is not in doubt.
            run.attempts = attempt - 1
            delay = float(exc.details.get("retry_in_s") or policy.backoff(max(1, attempt), self.rng))
        elif policy.exhausted(attempt):
            reason = Reason.RETRIES_EXHAUSTED
            await self.db.run(lambda tx: self.transitions.step_failed(tx, run, step, exc, reason, uncertain=True))
            return
        else:
            delay = policy.backoff(attempt, self.rng)
            self.counts["retries"] += 1
            if self.metrics:
                self.metrics.step_retries.labels(step.name).inc()
        delay = max(0.0, min(delay, run.deadline_at - self.clock()))
        retry_at = self.clock() + delay
        uncertain = not isinstance(exc, BreakerOpen)
        await self.db.run(
            lambda tx: self.transitions.record_retry(tx, run, step, exc, retry_at, uncertain=uncertain), wait=Acked.NONE
        )
        await self._sleep(run, delay)

    async def compensate(self, run: SagaRun[D]) -> None:
        t = self.transitions
        index = run.next_to_compensate(self.saga.compensable)
        if index is None:
            await self.db.run(lambda tx: t.finish(tx, run, run.ending()))
            return
        step = self.saga.steps[index]
        assert step.compensate is not None
        run.step_index = index
        attempt = run.comp_failures + 1
        run.wake.clear()  # a retry asked for from here on cuts the backoff after this attempt short
        await self.db.run(lambda tx: t.record_start(tx, run, step, ActionKind.COMPENSATE, attempt), wait=Acked.NONE)
        began = time.monotonic()
        try:
            await self.send(self._call(run, step, step.compensate, ActionKind.COMPENSATE))
        except OmsError as exc:
            if self.metrics:
                self.metrics.compensations.labels(step.name, exc.code).inc()
            run.comp_failures = attempt
            delay = self.comp_retry.backoff(attempt, self.rng)
            retry_at = self.clock() + delay
            await self.db.run(lambda tx, e=exc: t.record_comp_failure(tx, run, step, e, retry_at), wait=Acked.NONE)
            await self._sleep(run, delay)
            return
        self.counts["compensations"] += 1
        if self.metrics:
            self.metrics.compensations.labels(step.name, "OK").inc()
        elapsed_ms = (time.monotonic() - began) * 1000
        await self.db.run(lambda tx: t.compensated(tx, run, step, elapsed_ms), wait=Acked.NONE)

    def _call(self, run: SagaRun[D], step: Step[D], action: Action[D], kind: ActionKind) -> StepCall:
        reply = action.route.reply if kind is ActionKind.INVOKE else None
        return StepCall(
            action.route, action.command(run.data), run.saga_id, step.name, kind, self.step_timeout_s, reply
        )

    async def _sleep(self, run: SagaRun[D], delay: float) -> None:
        """Wait out a backoff, or less: a stop or a retry asked for since the attempt began (while its request
        was out, too) ends it at once."""
        if not run.wake.is_set():
            try:
                async with asyncio.timeout(delay):
                    await run.wake.wait()
            except TimeoutError:
                pass
        run.wake.clear()

    def _count(self, step: Step[D], outcome: str) -> None:
        if self.metrics:
            self.metrics.child(self.metrics.step_attempts, step.name, outcome).inc()
