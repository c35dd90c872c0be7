"""Idempotency keys: the effect and its stored reply are written in one transaction.

A repeat of a key returns the stored reply (also a concurrent repeat: units of
work are serialized), parsed back into the route's reply model; the same key
with a different request is a CONFLICT. Business errors are stored as replies
too, so a repeat answers the same way; transient errors are not, so a retry
can still succeed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from bus.envelope import envelope, unwrap
from bus.errors import BusinessError, Conflict
from bus.ids import now_iso
from bus.unit import Rejected, Tx

M = TypeVar("M", bound=BaseModel)


def saga_key(saga_id: str, step: str, action: str) -> str:
    """The key of a saga's request (design decision 5): one per step and action, the same on every attempt."""
    return f"{saga_id}:{step}:{action}"


def saga_in_key(key: str | None) -> str | None:
    """The saga a saga's key is of (`{saga_id}:{step}:{action}`, design decision 5): for a participant's log
    lines and events, since the key is all it hears of the saga. None for any other key."""
    found = _SAGA_KEY.fullmatch(key) if key else None
    return found.group(1) if found else None


_SAGA_KEY = re.compile(r"(saga_[0-9a-f]{24}):[a-z][a-z0-9_]{0,63}:(?:invoke|compensate)")


def request_hash(cmd: BaseModel, exclude: frozenset[str] = frozenset()) -> str:
    """What makes two requests "the same": the validated command as JSON (fields in the model's order)."""
    return hashlib.sha256(cmd.model_dump_json(exclude=set(exclude)).encode()).hexdigest()


def _earlier_request_hash(cmd: BaseModel, exclude: frozenset[str]) -> str:
    """The hash rows stored before the one above replaced it (sorted keys through `json`)."""
    body = cmd.model_dump(mode="json", exclude=set(exclude))
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def same_request(stored: str, digest: str, cmd: BaseModel | None, exclude: frozenset[str]) -> bool:
    return stored == digest or (cmd is not None and stored == _earlier_request_hash(cmd, exclude))


def once(
    key: str | None,
    endpoint: str,
    digest: str,
    effect: Callable[[Tx], M | Rejected],
    *,
    cmd: BaseModel | None = None,
    exclude: frozenset[str] = frozenset(),
    reply: type[M] | None = None,
    on_repeat: Callable[[], None] | None = None,
) -> Callable[[Tx], M | dict[str, Any] | Rejected]:
    """Wrap a unit of work so that it runs at most once per idempotency key.

    The result is a whole unit of work (`Database.run` runs it as it is), not a part of one: an effect
    that raises a business error is undone with everything else the unit did, and the error is its
    stored reply. A repeat answers the stored reply: parsed into `reply` (the route's reply model), or
    as stored without it; `on_repeat` hears that the stored reply is the answer.

    With `cmd` (and the `exclude` its digest was computed with), a key stored by an earlier version,
    under the earlier hash, is still recognised as the same request."""
    if key is None:
        return effect
    saga_id = saga_in_key(key)

    def unit(tx: Tx) -> M | dict[str, Any] | Rejected:
        tx.saga_id = saga_id  # a participant's events name the saga that asked (its key is all it hears of it)
        row = tx.one("SELECT endpoint, request_hash, reply FROM idempotency WHERE key = ?", (key,))
        if row is not None:
            if row["endpoint"] != endpoint or not same_request(row["request_hash"], digest, cmd, exclude):
                return Rejected(
                    Conflict(
                        f"Idempotency-Key {key!r} was already used for a different request",
                        {"field": "Idempotency-Key", "endpoint": row["endpoint"]},
                    )
                )
            stored = unwrap(row["reply"])
            if on_repeat is not None:
                on_repeat()
            if not isinstance(stored, dict):
                return Rejected(stored)
            return stored if reply is None else reply.model_validate(stored)
        try:
            outcome = effect(tx)
        except BusinessError as exc:
            # The unit so far is the lookup above and the effect: undo the effect's rows, and its events with
            # them (the relay must not publish those), then store the error as the reply.
            tx.undo()
            outcome = Rejected(exc)
        if isinstance(outcome, Rejected) and not isinstance(outcome.error, BusinessError):
            return outcome
        answered = outcome.error if isinstance(outcome, Rejected) else outcome
        tx.execute(
            "INSERT INTO idempotency (key, endpoint, request_hash, reply, created_at) VALUES (?, ?, ?, ?, ?)",
            (key, endpoint, digest, envelope(answered), now_iso()),
        )
        return outcome

    return unit


def restore(tx: Tx, key: str, endpoint: str, digest: str, answered: BaseModel, created_at: str) -> None:
    """Store a key's reply as a rebuild by replay learns it from an event (a repeat of the event keeps the
    first)."""
    tx.execute(
        "INSERT INTO idempotency (key, endpoint, request_hash, reply, created_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (key, endpoint, digest, envelope(answered), created_at),
    )
