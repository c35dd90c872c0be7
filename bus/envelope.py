"""The reply envelope, in one place: `{"ok": true, "result": {...}}` or `{"ok": false, "error": {...}}`.

The runner sends it, the idempotency table stores it, a rebuild by replay writes it for the keys it
restores; the client reads a reply's (`bus.client.decode_reply`, which also refuses a malformed one).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bus import jsonb
from bus.errors import OmsError, from_wire


def envelope(outcome: BaseModel | OmsError) -> bytes:
    if isinstance(outcome, OmsError):
        return jsonb.dumps({"ok": False, "error": outcome.to_wire()})
    return jsonb.dumps({"ok": True, "result": outcome.model_dump(mode="json")})


def unwrap(stored: bytes) -> dict[str, Any] | OmsError:
    """A stored envelope's result, or the typed error it holds."""
    body = jsonb.loads(stored)
    if body.get("ok"):
        return body["result"]
    return from_wire(body["error"])
