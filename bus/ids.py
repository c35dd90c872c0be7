"""Identifiers and timestamps: time-ordered ids, UTC ISO-8601 times."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any


def new_id(prefix: str) -> str:
    """`<prefix>_` + 12 hex digits of milliseconds + 12 random hex digits: sortable by creation.

    Ids must be unique, not secret: the PRNG (seeded from the OS at start) spares a syscall per id."""
    return f"{prefix}_{int(time.time() * 1000):012x}{random.getrandbits(48):012x}"


def id_floor(prefix: str, ts: float) -> str:
    """The lowest id `new_id(prefix)` can make at `ts` (seconds since the epoch) or later: every id made
    before `ts` sorts below it, every id made at or after it sorts at or above it."""
    return f"{prefix}_{max(0, int(ts * 1000)):012x}"


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def now_iso() -> str:
    """The current UTC time to the millisecond, `2026-11-26T14:01:19.327Z` (hot: formats once a second)."""
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


def iso(ts: float) -> str:
    """A wall-clock timestamp (seconds since the epoch) as ISO-8601 UTC."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
