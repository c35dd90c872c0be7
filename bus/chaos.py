"""Fault injection, set at run time on `chaos.<service>.set|get|clear`.

`error_rate` answers UNAVAILABLE without doing anything; `latency_ms` (plus up
to `latency_jitter_ms`) delays before the work; `drop_reply_rate` does the
work, commits, and sends no reply. Faults apply to the listed endpoints (all
business endpoints when none are listed); a seed makes a run reproducible.
"""

from __future__ import annotations

import asyncio
import random

from bus.contract import ChaosSet, ChaosState
from bus.errors import Unavailable


class Chaos:
    def __init__(self, service: str) -> None:
        self.service = service
        self.config = ChaosSet()
        self._rng = random.Random()
        self.injected = {"error": 0, "latency": 0, "drop_reply": 0}

    @property
    def active(self) -> bool:
        c = self.config
        return bool(c.error_rate or c.latency_ms or c.latency_jitter_ms or c.drop_reply_rate)

    def set(self, config: ChaosSet) -> ChaosState:
        self.config = config
        self._rng = random.Random(config.seed)
        return self.state()

    def clear(self) -> ChaosState:
        return self.set(ChaosSet())

    def state(self) -> ChaosState:
        return ChaosState(service=self.service, active=self.active, **self.config.model_dump())

    def _applies(self, endpoint: str) -> bool:
        return self.active and (not self.config.endpoints or endpoint in self.config.endpoints)

    async def before(self, endpoint: str) -> None:
        """Delay and/or refuse a request before it does anything."""
        if not self._applies(endpoint):
            return
        c = self.config
        delay_ms = c.latency_ms + (self._rng.uniform(0, c.latency_jitter_ms) if c.latency_jitter_ms else 0)
        if delay_ms:
            self.injected["latency"] += 1
            await asyncio.sleep(delay_ms / 1000)
        if c.error_rate and self._rng.random() < c.error_rate:
            self.injected["error"] += 1
            raise Unavailable(f"injected fault on {self.service}.{endpoint}", {"chaos": True})

    def drop_reply(self, endpoint: str) -> bool:
        """After the work is committed: should the reply be lost?"""
        if not self._applies(endpoint) or not self.config.drop_reply_rate:
            return False
        if self._rng.random() < self.config.drop_reply_rate:
            self.injected["drop_reply"] += 1
            return True
        return False
