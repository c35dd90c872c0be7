"""Shipments and returns with the order service killed (SIGKILL) mid-way and restarted: every shipment and
return resumes and ends, nothing is captured or refunded twice, no commit is lost, the audit is clean."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest

from bus import subjects as s
from bus.audit import run_audit
from bus.client import Client
from bus.errors import OmsError
from bus.settings import Settings
from cli import stack as oms_stack
from tests.conftest import service_processes, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ORDERS = 60


@pytest.fixture
async def procs(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """The three services as real processes (nats-server is the session's)."""
    async for found in service_processes(settings, monkeypatch):
        yield found


async def until_answered(client: Client, route: s.Route, body: dict[str, Any], key: str) -> dict[str, Any]:
    """What a careful client does: the same request with the same key until the order service answers."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await client.call(route, body, idempotency_key=key, timeout_s=8)
        except OmsError as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_the_order_service_killed_mid_shipment_and_mid_return_resumes_both(procs):
    client, settings = procs["client"], procs["settings"]
    placed = []
    for i in range(ORDERS):
        body = {"customer_id": f"kill-{i}", "items": [{"sku": "CB-505", "qty": 2}], "wait_ms": 10_000}
        placed.append(await until_answered(client, s.ORDERS_PLACE, body, f"place-{i}"))
    assert all(o["status"] == "CONFIRMED" for o in placed)

    async def ship_and_return(i: int, order: dict[str, Any]) -> dict[str, Any]:
        body = {"order_id": order["order_id"], "wait_ms": 5000}
        shipped = await until_answered(client, s.ORDERS_SHIP, body, f"ship-{i}")
        if i % 2 == 0:
            return shipped
        while shipped["status"] == "SHIPPING":  # answered before it ended (the kill): ask again
            shipped = await until_answered(client, s.ORDERS_SHIP, body, f"ship-{i}")
        back = {"order_id": order["order_id"], "items": [{"sku": "CB-505", "qty": 1}], "wait_ms": 5000}
        return await until_answered(client, s.ORDERS_RETURN, back, f"return-{i}")

    work = asyncio.gather(*(ship_and_return(i, o) for i, o in enumerate(placed)))

    async def shipping() -> int | None:
        found = await client.call(s.ORDERS_LIST, {"status": "SHIPPING", "limit": 1000})
        return len(found["orders"]) or None

    in_flight = await wait_for(shipping, timeout=60, interval=0.02, what="shipments under way")
    assert oms_stack.kill(settings, "orders", signal.SIGKILL) is not None
    assert in_flight > 0  # killed with shipments under way
    await oms_stack.up(settings)
    await asyncio.wait_for(work, timeout=120)

    async def all_ended() -> list[dict[str, Any]] | None:
        got = [await client.call(s.ORDERS_GET, {"order_id": o["order_id"]}) for o in placed]
        done = all(o["status"] in ("SHIPPED", "PARTIALLY_RETURNED") for o in got)
        return got if done and not any(r["status"] == "RETURNING" for o in got for r in o["returns"]) else None

    ended = await wait_for(all_ended, timeout=60, interval=0.3, what="every shipment and return to end")
    for i, order in enumerate(ended):
        payment = await client.call(s.PAYMENT_GET, {"order_id": order["order_id"]})
        assert payment["captured_cents"] == order["total_cents"], payment  # captured once, in full
        unit = order["items"][0]["unit_price_cents"]
        assert payment["refunded_cents"] == (unit if i % 2 else 0), payment  # refunded once, if at all
        assert order["status"] == ("PARTIALLY_RETURNED" if i % 2 else "SHIPPED")
    report = await run_audit(client, procs["js"], settings.stream_name, settings.saga)
    assert report.ok, json.dumps(report.to_dict(), indent=1)
