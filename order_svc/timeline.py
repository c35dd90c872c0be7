"""An order's timeline across all services, read from OMS_EVENTS (`events.*.*.<order_id>`)."""

from __future__ import annotations

import json
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus.subjects import order_timeline_subject

MAX_EVENTS = 500


async def order_events(js: JetStreamContext, stream: str, order_id: str) -> list[dict[str, Any]]:
    """Every event of the order once, in the order they occurred, each with its stream sequence (a copy
    stored again, with an event id already told, is left out: the first one stored stands)."""
    events: list[dict[str, Any]] = []
    told: set[str] = set()
    seq = 1
    subject = order_timeline_subject(order_id)
    while len(events) < MAX_EVENTS:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        seq = (msg.seq or seq) + 1
        body = json.loads(msg.data or b"{}")
        event_id = body.get("event_id") or (msg.headers or {}).get("Nats-Msg-Id")
        if event_id is not None:
            if event_id in told:
                continue
            told.add(event_id)
        body["seq"] = msg.seq
        body["subject"] = msg.subject
        events.append(body)
    # Services publish concurrently, so stream order can differ from what happened first (order_created
    # is acknowledged while the saga already reserves): tell the story by the time each event occurred.
    events.sort(key=lambda e: (e.get("occurred_at") or "", e["seq"]))
    return events
