"""`oms console` in a real browser: headless Chromium (the system's, driven by Playwright; nothing is
downloaded) against `oms console` and an embedded stack. Screenshots go to test-artifacts/console/."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bus import auth
from bus import subjects as s
from bus.client import Client
from bus.connect import connect
from bus.natsserver import free_port
from bus.settings import Settings
from cli import stack
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = os.environ.get("OMS_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed: pip install -e '.[dev]'")
if CHROMIUM is None:
    pytest.skip(
        "no Chromium found (install Debian's chromium, or set OMS_TEST_CHROMIUM): the browser tests skip",
        allow_module_level=True,
    )

# Faults play out in seconds: short backoff (the failures here are errors, not timeouts), a saga is stuck
# after 3 failed compensations, the breaker opens after 3 failures; the deadline is long.
FAST = {
    "OMS_SAGA__STEP_TIMEOUT_MS": "4000",
    "OMS_SAGA__RETRY_MAX_INTERVAL_MS": "300",
    "OMS_SAGA__STUCK_AFTER_ATTEMPTS": "3",
    "OMS_SAGA__RETRY_MAX_ATTEMPTS": "1000",
    "OMS_SAGA__DEADLINE_MS": "120000",
    "OMS_BREAKER__THRESHOLD": "3",
    "OMS_BREAKER__TTL_MS": "700",
}


@dataclass
class Stage:
    settings: Settings
    url: str
    env: dict[str, str]

    def oms(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def call(self, role: str, route: s.Route, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        nc = await connect(auth.login(self.settings, role), "browser-test", persistent=False)
        try:
            return await Client(nc, timeout_s=20).call(route, body, idempotency_key=key)
        finally:
            await nc.close()


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    home = tmp_path_factory.mktemp("browser")
    ports = {f"OMS_METRICS_PORT_{n}": "0" for n in ("ORDERS", "INVENTORY", "PAYMENT")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | FAST | ports
    env |= {"OMS_HOME": str(home), "OMS_NATS_PORT": "0"}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the services `oms up` starts read their settings from it
    settings = Settings()
    config = stack.StackSettings(nats_port=0)
    console = None
    try:
        asyncio.run(stack.up(settings, config))
        port = free_port()
        console = subprocess.Popen(
            [sys.executable, "-m", "cli", "console", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                import urllib.request

                urllib.request.urlopen(url + "/orders", timeout=1)
                break
            except OSError:
                if console.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"oms console did not start: {console.stderr.read() if console.stderr else ''}")
                time.sleep(0.1)
        yield Stage(settings, url, env)
    finally:
        if console is not None:
            console.terminate()
            console.wait(10)
        stack.down(settings, config)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with playwright.async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    yield opened
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    await context.close()


async def test_an_order_placed_from_the_cli_appears_and_turns_confirmed_without_a_reload(stage: Stage, page: Any):
    await page.goto(stage.url + "/orders")
    await page.evaluate("window.omsLoaded = 'this page, not a reload'")
    assert stage.oms("chaos", "set", "payment", "--latency-ms", "2500").returncode == 0
    try:
        placed = await stage.call(
            "cli",
            s.ORDERS_PLACE,
            {"customer_id": "browser-1", "items": [{"sku": "KB-101", "qty": 1}], "wait_ms": 0},
            key="browser-1",
        )
        row = page.locator(f'tr[data-order="{placed["order_id"]}"]')
        await row.locator(".status", has_text="PENDING").wait_for(timeout=10_000)
        await row.locator(".status", has_text="CONFIRMED").wait_for(timeout=20_000)
    finally:
        stage.oms("chaos", "clear", "payment")
    assert await page.evaluate("window.omsLoaded") == "this page, not a reload"


async def test_an_orders_page_draws_its_saga_across_the_services_lanes(stage: Stage, page: Any):
    order = await stage.call(
        "cli", s.ORDERS_PLACE, {"customer_id": "browser-2", "items": [{"sku": "MS-202", "qty": 1}]}, key="browser-2"
    )
    assert order["status"] == "CONFIRMED"
    await page.goto(f"{stage.url}/orders/{order['order_id']}")
    inventory = page.locator('g.lane[data-lane="inventory"] g.bar[data-step="reserve_stock"]')
    payment = page.locator('g.lane[data-lane="payment"] g.bar[data-step="authorize_payment"]')
    assert await inventory.count() == 1 and await payment.count() == 1
    assert await page.locator('g.lane[data-lane="orders"] g.mark').count() >= 2  # created, confirmed
    # Both bars measured in one turn of the page's script: a live update may redraw the timeline between two
    # separate measurements (and leave the first one's element detached).
    xs = await page.evaluate(
        """() => [["inventory", "reserve_stock"], ["payment", "authorize_payment"]].map(([lane, step]) => {
            const bar = document.querySelector(`g.lane[data-lane="${lane}"] g.bar[data-step="${step}"] rect`);
            return bar ? bar.getBoundingClientRect().x : null;
        })"""
    )
    assert None not in xs and xs[0] <= xs[1], xs  # reserved before it was paid


async def test_a_failing_payment_service_opens_its_breaker_on_the_services_page(stage: Stage, page: Any):
    await page.goto(stage.url + "/services")
    assert stage.oms("chaos", "set", "payment", "--error-rate", "1").returncode == 0
    try:
        for i in range(4):
            body = {"customer_id": f"browser-b{i}", "items": [{"sku": "KB-101", "qty": 1}], "wait_ms": 0}
            await stage.call("cli", s.ORDERS_PLACE, body, key=f"browser-b{i}")
        breaker = page.locator('tr[data-service="orders"] [data-breaker="payment"]')
        await breaker.filter(has_text="open").first.wait_for(timeout=20_000)
        assert await page.locator(".transitions li", has_text="payment").count() >= 1
    finally:
        stage.oms("chaos", "clear", "payment")


async def test_an_operator_retries_a_stuck_saga_from_its_button(stage: Stage, page: Any):
    """A declined card turns the saga back; its release keeps failing, so it is stuck compensating."""
    assert stage.oms("chaos", "set", "inventory", "--error-rate", "1", "--endpoint", "release").returncode == 0
    body = {
        "customer_id": "browser-stuck",
        "items": [{"sku": "KB-101", "qty": 1}],
        "payment_method": "card_declined",
        "wait_ms": 0,
    }
    order = await stage.call("cli", s.ORDERS_PLACE, body, key="browser-stuck")
    saga_id = order["saga"]["saga_id"] if order.get("saga") else "saga_" + order["order_id"].removeprefix("ord_")

    async def stuck() -> bool:
        return bool((await stage.call("admin", s.SAGA_GET, {"saga_id": saga_id})).get("stuck"))

    await wait_for(stuck, timeout=40, what="the saga to be stuck")
    await page.goto(stage.url + "/sagas")
    creds = auth.load(stage.settings, "admin")
    assert creds is not None
    await page.fill('input[name="password"]', creds.password)
    await page.click("text=sign in to act")
    row = page.locator(f'tr[data-saga="{saga_id}"]')
    await row.wait_for(timeout=10_000)
    assert await row.locator(".s-stuck").count() == 1
    assert stage.oms("chaos", "clear", "inventory").returncode == 0
    await row.locator("button.retry").click()

    async def failed() -> bool:
        return (await stage.call("cli", s.ORDERS_GET, {"order_id": order["order_id"]}))["status"] == "FAILED"

    await wait_for(failed, timeout=30, what="the retried compensation to end the order")
    reservations = await stage.call("admin", s.INVENTORY_RESERVATIONS, {"order_id": order["order_id"]})
    assert [r["status"] for r in reservations["reservations"]] == ["RELEASED"]
    await page.goto(f"{stage.url}/orders/{order['order_id']}")
    await page.locator(".status", has_text="FAILED").first.wait_for(timeout=10_000)
