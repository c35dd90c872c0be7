"""What a service is to the kernel: its definition (`ServiceSpec`) and what its `build` wires to (`Kernel`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from bus.client import Client
from bus.contract import Event
from bus.db import Database
from bus.metrics import Metrics
from bus.migrations import Schema
from bus.outbox import Relay
from bus.service import ServiceRunner
from bus.settings import Settings
from bus.unit import Tx


@dataclass
class Kernel:
    """Everything a service's `build` function wires its handlers to."""

    settings: Settings
    name: str
    nc: Nats
    js: JetStreamContext
    db: Database
    relay: Relay
    client: Client
    runner: ServiceRunner
    metrics: Metrics
    stack: AsyncExitStack
    extras: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its name, the tables of its file, how it builds its endpoints, how it is rebuilt."""

    name: str
    description: str
    schema: Schema
    build: Callable[[Kernel], Awaitable[None]]
    # Recovery by replay (bus.replay): the rows one event leaves behind, without emitting anything ...
    apply: Callable[[Tx, Event], None] | None = None
    # ... and, once after the last event, what the events alone cannot tell (deadlines, steps to re-send).
    after_replay: Callable[[Tx, Settings], None] | None = None
