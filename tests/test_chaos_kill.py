"""Services killed with SIGKILL mid-run and restarted: every order ends, nothing is lost, audit clean."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
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
from cli.processes import PACKAGES, Layout, alive
from tests.conftest import outlast_duplicate_window, repeated_ids, service_processes, stream_events, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ORDERS = 300
CONCURRENCY = 30


@pytest.fixture
async def procs(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """The three services as real processes (nats-server is the session's)."""
    async for found in service_processes(settings, monkeypatch, OMS_BREAKER__TTL_MS="300"):
        yield found


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


@pytest.fixture
async def outage_procs(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """The stack as processes with a duplicate window of 1 s, deleting acknowledged outbox rows a minute
    after their ack when no write comes first (0.5 s by default): a kill between the two is easy to hit."""
    monkeypatch.setenv("OMS_STREAM_DUPLICATE_WINDOW_S", "1")
    monkeypatch.setenv("OMS_OUTBOX_FORGET_AFTER_S", "60")
    settings = settings.model_copy(update={"stream_duplicate_window_s": 1, "outbox_forget_after_s": 60})
    await oms_stack.up(settings)
    conn = await nats.connect(settings.nats_url)
    yield {"settings": settings, "client": Client(conn, timeout_s=15), "js": conn.jetstream(), "nc": conn}
    await conn.close()
    oms_stack.down(settings)


def outbox_ids(settings: Settings, service: str) -> set[str]:
    """The event ids in a service's outbox, read from its file."""
    path = Settings(home=Layout.of(settings).home).db_path(service)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT event_id FROM outbox")}
    finally:
        conn.close()


async def test_events_acknowledged_before_a_kill_are_stored_once_after_an_outage_longer_than_the_window(
    outage_procs,
):
    settings, client, js = outage_procs["settings"], outage_procs["client"], outage_procs["js"]
    placed = [await place_until_answered(client, f"outage-{i}", i) for i in range(10)]
    await all_terminal(client, placed)

    async def all_acknowledged() -> bool:
        health = [await client.call(s.HEALTH[name], {}) for name in SERVICES]
        return all(h["outbox_backlog"] == 0 for h in health)

    await wait_for(all_acknowledged, what="every event to be acknowledged")
    # Nothing was written since the last acks, so each outbox still holds rows the stream has.
    held = {name: outbox_ids(settings, name) for name in SERVICES}
    assert all(held.values()), held
    stored = {e["event_id"] for e in await stream_events(outage_procs["nc"], settings)}
    assert set().union(*held.values()) <= stored

    pids = [oms_stack.kill(settings, name, signal.SIGKILL) for name in SERVICES]
    await wait_for(lambda: not any(alive(pid) for pid in pids if pid), what="the services to die")
    await outlast_duplicate_window(js, settings.stream_name)  # the outage: the stream forgets their ids
    await oms_stack.up(settings)

    await wait_for(all_acknowledged, what="the restarted relays to have nothing left to send")
    assert repeated_ids(await stream_events(outage_procs["nc"], settings)) == {}
    # Each relay found its outbox in the stream: it sent none of it again, and deleted all of it at once.
    assert not any(outbox_ids(settings, name) for name in SERVICES)
    placed += [await place_until_answered(client, f"after-{i}", i) for i in range(5)]
    await all_terminal(client, placed)
    report = await run_audit(client, js, settings.stream_name, settings.saga)
    assert report.ok, json.dumps(report.to_dict(), indent=1)
    assert report.orders == len(placed)
