"""What every service answers beside its business: fault injection (`chaos.<service>.*`), its health, and
the body of every event in OMS_EVENTS."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from bus.contract.base import Command, Result

# -- fault injection ------------------------------------------------------


class ChaosSet(Command):
    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(0, ge=0, le=60_000)
    latency_jitter_ms: int = Field(0, ge=0, le=60_000)
    drop_reply_rate: float = Field(0.0, ge=0.0, le=1.0)
    endpoints: list[Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # a 64-bit integer, as every JSON tool can write
    # A rate written without a decimal point (0, 1) is fine as it is: a strict float takes an integer, and
    # refuses one out of range by its bounds (no conversion first, which overflowed for a huge integer).


class ChaosQuery(Command):
    pass


class ChaosState(Result):
    service: str
    error_rate: float = 0.0
    latency_ms: int = 0
    latency_jitter_ms: int = 0
    drop_reply_rate: float = 0.0
    endpoints: list[str] | None = None
    seed: int | None = None
    active: bool = False


# -- health ---------------------------------------------------------------


class HealthQuery(Command):
    pass


class Health(Result):
    """What `oms status` shows of one service instance beyond `$SRV.STATS`."""

    service: str
    version: str
    pid: int
    started_at: str
    uptime_s: float
    in_flight: int
    outbox_backlog: int
    outbox_lag_s: float
    events_published: int
    db_commits: int
    db_units: int
    breakers: dict[str, str] = {}
    sagas_in_flight: int | None = None
    counts: dict[str, int] = {}
    chaos: ChaosState


# -- events ---------------------------------------------------------------


class Event(Result):
    """The body of every message in OMS_EVENTS."""

    event_id: str
    type: str
    occurred_at: str
    service: str
    order_id: str | None = None
    saga_id: str | None = None
    data: dict[str, Any] = {}
