"""The durable saga engine: a saga's runs started, driven, stopped and resumed after a crash.

Forward: each step's attempt is recorded *before* its request and its outcome
*after*, with the idempotency key `{saga_id}:{step}:{action}`, so a resumed
saga re-sends the same request safely (`bus.saga.driver`). Backward: every step
that succeeded *or might have* (an attempt whose outcome is unknown) is
compensated in reverse order, retried until it succeeds; a saga that keeps
failing them is reported as stuck but never gives up.

Lifecycle: `create` inserts a run in the caller's unit of work and starts it
once that has committed; a run sends nothing before JetStream has what was
committed before it (its order's creation, say). `resume_all` drives, at
start, every saga that was running or compensating. A driver that fails
unexpectedly is restarted, after a backoff, from the saga's row.

The stop protocol: `request_stop` (a cancel or an abort) is written in the
caller's unit of work, so a crash cannot keep one without the other; once it
has committed, the saga's driver is woken, or the saga is driven from its row.
While a saga's row is being read to drive it (`_claims`), nothing else starts a
driver for it, and a stop noted meanwhile makes the read start again: a saga is
never driven from a row older than its last unit of work.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from bus.contract import SagaView, Window
from bus.db import Database
from bus.metrics import Metrics
from bus.saga import repo
from bus.saga.definition import RetryPolicy, Saga, Send
from bus.saga.driver import Driver
from bus.saga.state import ACTIVE, SagaRun, SagaStatus
from bus.saga.transitions import Transitions
from bus.settings import SagaSettings
from bus.unit import Tx

log = logging.getLogger(__name__)
D = TypeVar("D", bound=BaseModel)


@dataclass
class _Claim:
    """A saga whose row is being read to drive it; `stop_noted` when a stop committed meanwhile."""

    stop_noted: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SagaEngine(Generic[D]):
    """Runs one saga definition's instances: many at once (bounded), each one step at a time."""

    def __init__(
        self,
        db: Database,
        saga: Saga[D],
        send: Send,
        settings: SagaSettings,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.saga = saga
        self.settings = settings
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.counts: Counter[str] = Counter()  # retries, compensations and outcomes since start
        self.transitions = Transitions(saga, settings, clock)
        self.driver = Driver(
            db, saga, send, self.transitions, settings, counts=self.counts, metrics=metrics, clock=clock, rng=self.rng
        )
        self._restarts = RetryPolicy.from_settings(settings, forever=True)
        self._step_names = tuple(step.name for step in saga.steps)
        self._runs: dict[str, SagaRun[D]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._driver_failures: Counter[str] = Counter()  # consecutive unexpected failures, by saga
        self._claims: dict[str, _Claim] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent)

    # -- lifecycle ------------------------------------------------------------

    def create(self, tx: Tx, saga_id: str, ref: str, data: D) -> SagaRun[D]:
        """Insert a new saga in the caller's unit of work; it starts once that has committed."""
        run = self.transitions.create(tx, saga_id, ref, data)
        tx.after_commit(lambda: self.start(run))
        return run

    def start(self, run: SagaRun[D]) -> None:
        """Drive `run`, unless a driver has the saga or its row is being read to drive it (that reader then
        drives it, from what it read after `run` was committed). It sends nothing before JetStream has every
        event committed so far: its own order's creation, or what a crash left in the outbox."""
        if run.saga_id in self._runs or run.saga_id in self._claims or run.status not in ACTIVE:
            return
        run.sends_after_seq = max(run.sends_after_seq, self.db.horizon)
        self._runs[run.saga_id] = run
        if self.metrics:
            self.metrics.sagas_in_flight.inc()
        self._spawn(self._drive(run), f"saga-{run.saga_id}")

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resume(self, found: Any) -> None:
        self.start(repo.run_of(found, self.saga.data))

    def _restart_later(self, saga_id: str) -> float:
        """Drive a saga again, after a capped backoff, once its driver failed unexpectedly; returns the delay."""
        self._driver_failures[saga_id] += 1
        delay = self._restarts.backoff(self._driver_failures[saga_id], self.rng)
        self._spawn(self._restart(saga_id, delay), f"saga-restart-{saga_id}")
        return delay

    async def _restart(self, saga_id: str, delay: float) -> None:
        """From what its row says, since the failure may have left the run in memory ahead of a unit of
        work that was rolled back."""
        await asyncio.sleep(delay)
        try:
            await self._drive_stored(saga_id)
        except Exception:
            retry_in = self._restart_later(saga_id)
            log.exception("saga restart failed; trying again", extra={"saga_id": saga_id, "retry_in_s": retry_in})

    async def _drive_stored(self, saga_id: str) -> str | None:
        """Drive a saga from its row, unless a driver or another such read has it; returns the status read
        (None when someone else has the saga). See the module's docstring: the claim comes first."""
        claim = self._claim(saga_id)
        return None if claim is None else await self._read_and_drive(saga_id, claim)

    def _claim(self, saga_id: str) -> _Claim | None:
        if saga_id in self._runs or saga_id in self._claims:
            return None
        claim = self._claims[saga_id] = _Claim()
        return claim

    async def _read_and_drive(self, saga_id: str, claim: _Claim) -> str | None:
        try:
            while True:
                claim.stop_noted = False
                found = await self.db.read(lambda tx: repo.row(tx, saga_id))
                if not claim.stop_noted:
                    break
        finally:
            del self._claims[saga_id]
            claim.done.set()
        if found is None:
            return None
        self._resume(found)
        return str(found["status"])

    async def resume_all(self) -> int:
        """Start every saga that was running or compensating when the service last stopped."""
        rows = await self.db.read(lambda tx: repo.unfinished(tx, self.saga.name))
        for found in rows:
            self._resume(found)
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
        ended, _ = await self._wait(saga_id, timeout_s)
        return ended

    async def outcome(self, saga_id: str, timeout_s: float) -> Any:
        """Wait up to `timeout_s` for the saga to end; what its last unit of work left for a waiter
        (`SagaRun.result`) when it was driven here and has ended, else None."""
        ended, run = await self._wait(saga_id, timeout_s)
        return run.result if ended and run is not None and run.status not in ACTIVE else None

    async def _wait(self, saga_id: str, timeout_s: float) -> tuple[bool, SagaRun[D] | None]:
        claim = self._claims.get(saga_id)
        run = self._runs.get(saga_id)
        if run is None and claim is None:
            return True, None
        try:
            async with asyncio.timeout(timeout_s):  # no task of its own, unlike wait_for
                if claim is not None:  # its row is being read: it is driven once it is
                    await claim.done.wait()
                    run = self._runs.get(saga_id)
                if run is not None:
                    await run.done.wait()
        except TimeoutError:
            return False, run
        return True, run

    # -- the stop protocol, and an operator's retry -----------------------------

    def driving(self, saga_id: str) -> bool:
        """Whether this instance drives the saga now."""
        return saga_id in self._runs

    def retry_now(self, saga_id: str) -> bool:
        run = self._runs.get(saga_id)
        if run is None:
            return False
        run.wake.set()
        return True

    def request_stop(self, tx: Tx, saga_id: str, reason: str, *, reopen: bool, note: str | None = None) -> None:
        """Cancel or abort, in the caller's unit of work (with whatever else asked for it, so that a crash
        cannot keep one without the other). A running saga turns back at its next step boundary; the first
        stop asked for wins. A completed one is reopened and compensated, when `reopen`. Once the unit has
        committed, the saga's driver is woken, or the saga is driven from its row (`stopped`)."""
        run = self._note_stop(tx, saga_id, reason, reopen=reopen, note=note)
        if run is not None:
            tx.after_commit(lambda: self.stopped(run))

    def _note_stop(self, tx: Tx, saga_id: str, reason: str, *, reopen: bool, note: str | None) -> SagaRun[D] | None:
        found = repo.row(tx, saga_id)
        if found is None:
            return None
        run = self._runs.get(saga_id) or repo.run_of(found, self.saga.data)
        claim = self._claims.get(saga_id)
        if claim is not None:  # its row is being read to drive it: read again, to see this stop
            claim.stop_noted = True
        self.transitions.stop(tx, run, found, reason, reopen=reopen, note=note)
        return run

    def stopped(self, run: SagaRun[D]) -> None:
        """After a stop committed: wake the saga's driver, or drive it from its row."""
        if self._wake_driver(run):
            return
        claim = self._claim(run.saga_id)
        if claim is not None:
            self._spawn(self._drive_claimed(run.saga_id, claim), f"saga-stopped-{run.saga_id}")

    def _wake_driver(self, run: SagaRun[D]) -> bool:
        """Wake the saga's driver, if it has one here, to see the stop committed on `run`."""
        live = self._runs.get(run.saga_id)
        if live is None:
            # Nobody drives it (it had ended, its driver failed since, or it waits to be started): it goes on
            # from its row, the stop in it. Never from `run`: a driver may have run and ended since the unit
            # read it, or a unit of the saga's that failed may have left it ahead of what was committed.
            return False
        # Driven by another run than the one the stop was noted on (its driver started after the unit read the
        # saga): the stop is committed, so the live run learns it too.
        if live is not run and run.stop_reason and not live.stop_reason and live.status == SagaStatus.RUNNING:
            live.stop_reason = run.stop_reason
        live.wake.set()
        return True

    async def _drive_claimed(self, saga_id: str, claim: _Claim) -> None:
        try:
            await self._read_and_drive(saga_id, claim)
        except Exception:
            retry_in = self._restart_later(saga_id)
            log.exception(
                "reading a stopped saga failed; trying again", extra={"saga_id": saga_id, "retry_in_s": retry_in}
            )

    async def stop_forward(self, saga_id: str, reason: str, *, reopen: bool = True, note: str | None = None) -> str:
        """`request_stop` in a unit of its own, then on to its driver; returns the saga's status as the stop
        left it, or as its row says when it is driven from there ("UNKNOWN": no such saga)."""
        run = await self.db.run(lambda tx: self._note_stop(tx, saga_id, reason, reopen=reopen, note=note))
        if run is None:
            return "UNKNOWN"
        if self._wake_driver(run):
            return run.status
        read = await self._drive_stored(run.saga_id)
        return run.status if read is None else read

    # -- driving --------------------------------------------------------------

    async def _drive(self, run: SagaRun[D]) -> None:
        started = time.monotonic()
        try:
            await self.db.published(run.sends_after_seq)
            async with self._slots:
                while run.status in ACTIVE:
                    if run.status == SagaStatus.RUNNING:
                        await self.driver.forward(run)
                    else:
                        await self.driver.compensate(run)
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
                    self.metrics.saga_runs.labels(self.saga.name, outcome).inc()
                    self.metrics.child(self.metrics.saga_duration, outcome).observe(time.monotonic() - started)

    # -- views ----------------------------------------------------------------

    def status(self, tx: Tx, saga_id: str) -> SagaStatus | None:
        return repo.status(tx, saga_id)

    def view(self, tx: Tx, saga_id: str) -> SagaView | None:
        return repo.view(tx, self._step_names, saga_id, self.settings.stuck_after_attempts)

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
        """Newest first, within `window`; `data`: only sagas whose data holds these values (`repo.listing`)."""
        stuck_after = self.settings.stuck_after_attempts
        return repo.listing(tx, self._step_names, status, stuck, limit, stuck_after, window=window, data=data)
