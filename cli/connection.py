"""The CLI's NATS connection: short-lived, fails fast, and is bounded in time whatever the client does."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as Nats

from bus.connect import connect
from bus.errors import Unavailable
from bus.settings import Settings

CONNECT_BOUND_S = 3.0


async def connect_briefly(settings: Settings, name: str) -> Nats:
    """`bus.connect.connect(persistent=False)` with a deadline: nats-py keeps retrying a refused
    server when it may not reconnect, so an unbounded call could hang on a dead port."""
    try:
        return await asyncio.wait_for(connect(settings, name, persistent=False), CONNECT_BOUND_S)
    except TimeoutError:
        url = settings.resolved_nats_url()
        raise Unavailable(
            f"cannot reach NATS at {url} (no answer within {CONNECT_BOUND_S:g}s): "
            "start it with `oms up` or set OMS_NATS_URL",
            {"url": url},
        ) from None
