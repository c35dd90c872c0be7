"""Idempotency keys: the effect and its stored reply are written in one transaction.

A repeat of a key returns the stored reply (also a concurrent repeat: units of
work are serialized); the same key with a different request is a CONFLICT.
Business errors are stored as replies too, so a repeat answers the same way;
transient errors are not, so a retry can still succeed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from bus import jsonb
from bus.db import Tx
from bus.errors import BusinessError, Conflict, OmsError, from_wire
from bus.ids import now_iso


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
    effect: Callable[[Tx], BaseModel | OmsError],
    *,
    cmd: BaseModel | None = None,
    exclude: frozenset[str] = frozenset(),
) -> Callable[[Tx], BaseModel | dict[str, Any] | OmsError]:
    """Wrap a unit of work so that it runs at most once per idempotency key.

    The result is a whole unit of work (`Database.write` runs it as it is), not a part of one: an effect
    that raises a business error is undone with everything else the unit did.

    With `cmd` (and the `exclude` its digest was computed with), a key stored by an earlier version,
    under the earlier hash, is still recognised as the same request."""
    if key is None:
        return effect

    def unit(tx: Tx) -> BaseModel | dict[str, Any] | OmsError:
        row = tx.one("SELECT endpoint, request_hash, reply FROM idempotency WHERE key = ?", (key,))
        if row is not None:
            if row["endpoint"] != endpoint or not same_request(row["request_hash"], digest, cmd, exclude):
                return Conflict(
                    f"Idempotency-Key {key!r} was already used for a different request",
                    {"field": "Idempotency-Key", "endpoint": row["endpoint"]},
                )
            return replay(row["reply"])
        try:
            outcome = effect(tx)
        except BusinessError as exc:
            # The unit so far is the lookup above and the effect: undo the effect's rows, and its events with
            # them (the relay must not publish those), then store the error as the reply.
            tx.undo()
            outcome = exc
        if isinstance(outcome, OmsError) and not isinstance(outcome, BusinessError):
            return outcome
        tx.execute(
            "INSERT INTO idempotency (key, endpoint, request_hash, reply, created_at) VALUES (?, ?, ?, ?, ?)",
            (key, endpoint, digest, _stored(outcome), now_iso()),
        )
        return outcome

    return unit


def _stored(outcome: BaseModel | OmsError) -> bytes:
    if isinstance(outcome, OmsError):
        body: dict[str, Any] = {"ok": False, "error": outcome.to_wire()}
    else:
        body = {"ok": True, "result": outcome.model_dump(mode="json")}
    return jsonb.dumps(body)


def replay(reply: bytes) -> dict[str, Any] | OmsError:
    body = jsonb.loads(reply)
    if body.get("ok"):
        return body["result"]
    return from_wire(body["error"])
