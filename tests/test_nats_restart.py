"""nats-server stopped while orders flow and started again on the same store: nothing is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from bus import natsserver
from bus import subjects as s
from bus.audit import run_audit
from bus.client import Client
from bus.connect import connect
from bus.errors import OmsError
from bus.settings import Settings
from cli import stack as oms_stack
from tests.conftest import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ORDERS = 200


async def place_until_answered(client: Client, i: int) -> str:
    """A careful client: retry with the same key until the order service answers."""
    body = {"customer_id": f"r{i}", "items": [{"sku": "CB-505", "qty": 1}], "wait_ms": 5000}
    deadline = time.monotonic() + 90
    while True:
        try:
            order = await client.call(s.ORDERS_PLACE, body, idempotency_key=f"restart-{i}", timeout_s=8)
            return order["order_id"]
        except OmsError as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_nats_restart_mid_run_loses_no_order_and_no_event(tmp_path, monkeypatch):
    port = natsserver.free_port()
    store = tmp_path / "jetstream"
    server, url = natsserver.start(store, port=port)
    settings = Settings(
        home=tmp_path / "oms", nats_url=url, metrics_port_orders=0, metrics_port_inventory=0, metrics_port_payment=0
    )
    for name, value in {
        "OMS_SAGA__STEP_TIMEOUT_MS": "500",
        "OMS_SAGA__RETRY_MAX_INTERVAL_MS": "300",
        "OMS_SAGA__RETRY_MAX_ATTEMPTS": "1000",  # the sagas outwait the outage
        "OMS_SAGA__DEADLINE_MS": "60000",
        "OMS_BREAKER__TTL_MS": "300",
    }.items():
        monkeypatch.setenv(name, value)
    nc = None
    try:
        await oms_stack.up(settings)
        nc = await connect(settings, "restart-test")  # reconnects, like the services
        client = Client(nc, timeout_s=10)
        slots = asyncio.Semaphore(20)
        answered: list[str] = []

        async def one(i: int) -> None:
            async with slots:
                answered.append(await place_until_answered(client, i))

        load = asyncio.gather(*(one(i) for i in range(ORDERS)))
        await wait_for(lambda: len(answered) >= ORDERS // 4, timeout=60, what="a quarter of the orders")
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
        await asyncio.sleep(1.5)  # the server stays down for a while, by design of the test
        server, _ = natsserver.start(store, port=port)  # same port, same JetStream store
        await asyncio.wait_for(load, timeout=150)
        assert nc.stats["reconnects"] >= 1, "the client should have lived through the outage"
        assert len(set(answered)) == ORDERS

        async def all_ended() -> bool:
            listed = await client.call(s.ORDERS_LIST, {"limit": 1000})
            return len(listed["orders"]) == ORDERS and all(
                o["status"] in ("CONFIRMED", "FAILED", "CANCELLED") for o in listed["orders"]
            )

        await wait_for(all_ended, timeout=60, interval=0.2, what="every order to end")

        async def outboxes_empty() -> bool:
            for service in ("orders", "inventory", "payment"):
                if (await client.call(s.HEALTH[service], {}))["outbox_backlog"]:
                    return False
            return True

        await wait_for(outboxes_empty, timeout=30, what="every outbox to catch up")
        report = await run_audit(client, nc.jetstream(), settings.stream_name, settings.saga)
        assert report.ok, json.dumps(report.to_dict(), indent=1)
        assert report.orders == ORDERS
    finally:
        if nc is not None:
            await nc.close()
        oms_stack.down(settings)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=10)
