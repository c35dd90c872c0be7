"""Circuit breakers per downstream service: purgatory's state machine, one probe, an injectable clock."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from purgatory import AsyncCircuitBreakerFactory, ContextChanged, Event
from purgatory.domain.model import HalfOpenedState

from bus.errors import BreakerOpen, TransientError
from bus.settings import BreakerSettings

if TYPE_CHECKING:
    from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker

log = logging.getLogger(__name__)

STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
_STATE = {"closed": "closed", "opened": "open", "half-opened": "half_open"}  # purgatory's names -> ours


def _answered(exc: BaseException) -> bool:
    """True when the service answered, or was never asked: purgatory then counts a success."""
    return not isinstance(exc, TransientError) or isinstance(exc, BreakerOpen)


@dataclass
class _Circuit:
    breaker: AsyncCircuitBreaker
    published: str = "closed"  # the state last reported to on_change
    open_until: float = 0.0  # on the injected clock
    epoch: int = 0  # transitions so far; an answer counts only in the epoch its call was admitted in
    probing: bool = False


class Breakers:
    """One purgatory circuit breaker per downstream service, for `async with breakers.guard(name)`.

    purgatory counts the failures and moves the state; what it lacks is wrapped here:
    - it half-opens by `time.time()`: here the injected clock decides when an open breaker half-opens;
    - half-open lets every concurrent call through: here one probe goes out, the others are refused;
    - it rejects by raising its one `OpenedState`, whose traceback grows: each refusal is a new BreakerOpen;
    - a late answer to a call admitted before the last transition (say, one sent before the breaker
      opened) would decide for the probe: such answers are ignored.
    Only transient errors (not BreakerOpen) are failures; any other error means the service answered.
    A cancelled call gives no verdict. The state is lazy, as purgatory's: "open" until a call after the ttl.
    """

    def __init__(
        self,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.on_change = on_change
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=settings.threshold,
            default_ttl=settings.ttl_ms / 1000,
            exclude=[(Exception, _answered)],
        )
        self._factory.add_listener(self._published)
        self._circuits: dict[str, _Circuit] = {}

    def state(self, service: str) -> str:
        """ "closed", "open" or "half_open"; a service never called is closed."""
        circuit = self._circuits.get(service)
        return "closed" if circuit is None else _STATE[circuit.breaker.context.state]

    def states(self) -> dict[str, str]:
        return {service: self.state(service) for service in self._circuits}

    @asynccontextmanager
    async def guard(self, service: str) -> AsyncIterator[None]:
        """Run the body if the breaker lets the call out, else raise BreakerOpen without running it."""
        circuit = await self._circuit(service)
        probe = await self._admit(service, circuit)
        epoch = circuit.epoch
        try:
            yield
        except Exception as exc:
            await self._verdict(circuit, epoch, exc)
            raise
        else:
            await self._verdict(circuit, epoch, None)
        finally:
            if probe:
                circuit.probing = False

    async def _circuit(self, service: str) -> _Circuit:
        circuit = self._circuits.get(service)
        if circuit is None:
            breaker = await self._factory.get_breaker(service)
            circuit = self._circuits.setdefault(service, _Circuit(breaker))
        return circuit

    async def _admit(self, service: str, circuit: _Circuit) -> bool:
        """Let the call out, or raise a fresh BreakerOpen; True when the call is the half-open probe."""
        state = self.state(service)
        if state == "open":
            retry_in = circuit.open_until - self.clock()
            if retry_in > 0:
                raise _refusal(service, "open", retry_in)
            circuit.breaker.context.set_state(HalfOpenedState())
            await self._flush(circuit.breaker)
            state = "half_open"
        if state == "half_open":
            if circuit.probing:
                raise _refusal(service, "half-open and its probe is in flight", 0.0)
            circuit.probing = True
        await circuit.breaker.__aenter__()
        return state == "half_open"

    async def _verdict(self, circuit: _Circuit, epoch: int, exc: Exception | None) -> None:
        """Give purgatory the call's outcome, unless the breaker changed state since the call went out."""
        if circuit.epoch != epoch:
            return
        if exc is None:
            await circuit.breaker.__aexit__(None, None, None)
        else:
            await circuit.breaker.__aexit__(type(exc), exc, exc.__traceback__)

    @staticmethod
    async def _flush(breaker: AsyncCircuitBreaker) -> None:
        """Publish a transition made outside purgatory's __aexit__, exactly as its __aexit__ does."""
        while breaker.context.messages:
            await breaker.messagebus.handle(breaker.context.messages.pop(0), breaker.uow)

    def _published(self, name: str, kind: str, event: Event) -> None:
        """purgatory's hook: every transition of every breaker comes through here."""
        if kind != "state_changed" or not isinstance(event, ContextChanged):
            return
        circuit = self._circuits[name]
        old, new = circuit.published, _STATE[event.state]
        circuit.published = new
        circuit.epoch += 1
        if new == "open":
            circuit.open_until = self.clock() + self.settings.ttl_ms / 1000
        if self.on_change is not None:
            try:
                self.on_change(name, old, new)
            except Exception:
                # An observer must not replace the call's own outcome.
                log.exception("breaker on_change failed", extra={"target": name, "state": new})


def _refusal(service: str, why: str, retry_in: float) -> BreakerOpen:
    return BreakerOpen(
        f"circuit breaker for {service} is {why}; retry in {retry_in:.1f}s",
        {"target": service, "retry_in_s": round(retry_in, 3)},
    )
