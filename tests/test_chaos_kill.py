"""Services killed with SIGKILL mid-run and restarted: every order ends, nothing is lost, audit clean."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import nats
import pytest

from bus import subjects as s
from bus.audit import run_audit
from bus.client import Client
from bus.errors import OmsError
from bus.settings import SERVICES, Settings
from cli import stack as oms_stack
from cli.processes import PACKAGES, Layout
from tests.conftest import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ORDERS = 300
CONCURRENCY = 30


@pytest.fixture
async def procs(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """The three services as real processes (nats-server is the session's)."""
    monkeypatch.setenv("OMS_SAGA__STEP_TIMEOUT_MS", "500")
    monkeypatch.setenv("OMS_SAGA__RETRY_MAX_INTERVAL_MS", "300")
    monkeypatch.setenv("OMS_SAGA__RETRY_MAX_ATTEMPTS", "30")
    monkeypatch.setenv("OMS_SAGA__DEADLINE_MS", "20000")
    monkeypatch.setenv("OMS_BREAKER__TTL_MS", "300")
    await oms_stack.up(settings)
    conn = await nats.connect(settings.nats_url)
    yield {"settings": settings, "client": Client(conn, timeout_s=15), "js": conn.jetstream()}
    await conn.close()
    oms_stack.down(settings)


async def place_until_answered(client: Client, key: str, i: int, give_up_s: float = 60) -> str:
    """What a careful client does: retry with the same key until the order service answers."""
    body = {"customer_id": f"k{i}", "items": [{"sku": "CB-505", "qty": 1}], "wait_ms": 5000}
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            order = await client.call(s.ORDERS_PLACE, body, idempotency_key=key, timeout_s=8)
            return order["order_id"]
        except OmsError as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def run_with_kills(procs, victims: list[str]) -> list[str]:
    client, settings = procs["client"], procs["settings"]
    slots = asyncio.Semaphore(CONCURRENCY)
    answered: list[str] = []

    async def one(i: int) -> None:
        async with slots:
            answered.append(await place_until_answered(client, f"kill-{i}", i))

    load = asyncio.gather(*(one(i) for i in range(ORDERS)))
    await wait_for(lambda: len(answered) >= ORDERS // 4, timeout=60, what="a quarter of the orders")
    for victim in victims:
        assert oms_stack.kill(settings, victim, signal.SIGKILL) is not None
    await asyncio.sleep(1.5)  # the services stay dead for a while, by design of the test
    await oms_stack.up(settings)
    await asyncio.wait_for(load, timeout=120)
    return answered


async def all_terminal(client: Client, order_ids: list[str]) -> None:
    async def done() -> bool:
        listed = await client.call(s.ORDERS_LIST, {"limit": 1000})
        statuses = {o["order_id"]: o["status"] for o in listed["orders"]}
        return all(statuses.get(oid) in ("CONFIRMED", "FAILED", "CANCELLED") for oid in order_ids)

    await wait_for(done, timeout=60, interval=0.2, what="every order to end")


async def assert_clean(procs) -> None:
    settings = procs["settings"]
    report = await run_audit(procs["client"], procs["js"], settings.stream_name, settings.saga)
    assert report.ok, json.dumps(report.to_dict(), indent=1)
    assert report.orders == ORDERS


async def test_participants_killed_mid_run_every_order_ends_and_the_audit_is_clean(procs):
    answered = await run_with_kills(procs, ["inventory", "payment"])
    assert len(set(answered)) == ORDERS
    await all_terminal(procs["client"], answered)
    await assert_clean(procs)


async def test_the_order_service_killed_mid_run_resumes_every_saga(procs):
    answered = await run_with_kills(procs, ["orders"])
    assert len(set(answered)) == ORDERS  # one order per key, whatever the client had to retry
    await all_terminal(procs["client"], answered)
    await assert_clean(procs)


async def test_a_second_instance_on_a_database_in_use_exits_at_once_naming_the_first_which_serves_on(procs):
    settings, client = procs["settings"], procs["client"]
    env = oms_stack.child_env(settings)  # exactly what the running instances were started with
    home = Layout.of(settings).home
    for name in SERVICES:
        first = oms_stack.running_pid(settings, name)
        started = time.monotonic()
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", PACKAGES[name]], env=env, capture_output=True, text=True, timeout=30
        )
        took = time.monotonic() - started
        path = Settings(home=home).db_path(name)
        assert second.returncode == 1, second.stderr
        assert second.stderr.splitlines()[-1] == (
            f"{name}: {path} is in use by another {name} instance (pid {first}); "
            "one instance per database: stop it first"
        )
        assert "Traceback" not in second.stderr
        assert took < 15, f"the second {name} took {took:.1f} s to give up"
        assert oms_stack.running_pid(settings, name) == first
    # The first instances never noticed: orders go through and every invariant holds.
    placed = [await place_until_answered(client, f"second-{i}", i) for i in range(20)]
    await all_terminal(client, placed)
    report = await run_audit(client, procs["js"], settings.stream_name, settings.saga)
    assert report.ok, json.dumps(report.to_dict(), indent=1)
    assert report.orders == len(placed)
