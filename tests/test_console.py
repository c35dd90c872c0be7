"""`oms console` through Starlette's test client, over a real embedded stack (its accounts and users): every
page, filters and paging, the live feeds, operator actions with and without the admin user, CSRF, the
token off loopback, and escaping of what a page shows."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bus import auth
from bus import subjects as s
from bus.client import Client
from bus.connect import connect
from bus.settings import Settings
from cli import stack
from cli.console.app import create_app
from cli.console.timeline import layout

pytestmark = pytest.mark.slow


@dataclass
class Running:
    settings: Settings
    orders: list[dict[str, Any]]

    def call(self, role: str, route: s.Route, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            nc = await connect(auth.login(self.settings, role), "test", persistent=False)
            try:
                return await Client(nc, timeout_s=15).call(route, body, idempotency_key=key)
            finally:
                await nc.close()

        return asyncio.run(go())


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    settings = Settings(
        home=tmp_path_factory.mktemp("console"), metrics_port_orders=0, metrics_port_inventory=0, metrics_port_payment=0
    )
    config = stack.StackSettings(nats_port=0)
    try:
        asyncio.run(stack.up(settings, config))
        up = Running(settings, [])
        for i, method in enumerate(("card", "card", "card_declined")):
            body = {"customer_id": f"console-{i}", "items": [{"sku": "KB-101", "qty": 1}], "payment_method": method}
            up.orders.append(up.call("cli", s.ORDERS_PLACE, body, key=f"console-{i}"))
        yield up
    finally:
        stack.down(settings, config)


@pytest.fixture
def console(running: Running) -> Iterator[TestClient]:
    with TestClient(create_app(running.settings), base_url="http://127.0.0.1:8089") as client:
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def sign_in(console: TestClient, running: Running, password: str | None = None) -> Any:
    page = console.get("/orders")
    creds = auth.load(running.settings, "admin")
    assert creds is not None
    form = {"csrf": csrf_of(page.text), "user": "admin", "password": password or creds.password, "next": "/sagas"}
    return console.post("/signin", data=form, follow_redirects=False)


def test_every_page_answers_and_shows_what_it_is_about(console: TestClient, running: Running):
    orders = console.get("/orders")
    assert orders.status_code == 200
    for order in running.orders:
        assert order["order_id"] in orders.text
    assert "CONFIRMED" in orders.text and "FAILED" in orders.text
    for path, expected in (("/stock", "KB-101"), ("/services", "inventory"), ("/sagas", "sign in")):
        page = console.get(path)
        assert page.status_code == 200 and expected in page.text, path
    assert console.get("/", follow_redirects=False).headers["location"] == "/orders"
    assert "default-src 'self'" in orders.headers["content-security-policy"]


def test_one_order_shows_its_lines_payment_and_saga_across_three_lanes(console: TestClient, running: Running):
    declined = running.orders[2]
    page = console.get(f"/orders/{declined['order_id']}")
    assert page.status_code == 200
    assert 'data-lane="inventory"' in page.text and 'data-lane="payment"' in page.text
    assert page.text.count('data-step="reserve_stock"') == 2  # reserved, then released
    assert 'class="bar compensation' in page.text and "st-failed" in page.text  # the release, the declined card
    assert "PAYMENT_DECLINED" in page.text and "DECLINED" in page.text
    assert "order_failed" in page.text


def test_filters_page_and_refuse_what_the_contract_refuses(console: TestClient, running: Running):
    failed = console.get("/orders", params={"status": "FAILED"})
    assert running.orders[2]["order_id"] in failed.text and running.orders[0]["order_id"] not in failed.text
    one = console.get("/orders", params={"customer": "console-1"})
    assert running.orders[1]["order_id"] in one.text and running.orders[2]["order_id"] not in one.text
    first = console.get("/orders", params={"limit": 1})
    older = re.search(r'id="older" href="([^"]+)"', first.text)
    assert older is not None
    second = console.get(older.group(1).replace("&amp;", "&") + "&limit=1")
    assert second.status_code == 200 and "data-live" not in second.text.split('id="orders"')[1][:40]
    newest = running.orders[-1]["order_id"]
    assert newest in first.text and newest not in second.text
    bad = console.get("/orders", params={"status": "SHIPPED<b>"})
    assert bad.status_code == 400 and "status: one of" in bad.text and "<b>" not in bad.text
    assert console.get("/orders/not an id").status_code == 400
    missing = console.get("/orders/ord_missing")
    assert missing.status_code == 404 and "ord_missing" in missing.text


def test_a_live_feed_sends_the_elements_html(console: TestClient, running: Running):
    with console.stream("GET", "/live/stock?once=1") as feed:
        body = "".join(feed.iter_text())
    assert body.startswith("data: <table>") and "KB-101" in body
    oid = running.orders[0]["order_id"]
    with console.stream("GET", f"/live/orders/{oid}?once=1") as feed:
        assert "CONFIRMED" in "".join(feed.iter_text())


def test_actions_need_an_operator_and_the_forms_csrf(console: TestClient, running: Running):
    target = running.orders[0]
    page = console.get(f"/orders/{target['order_id']}")
    form = {"csrf": csrf_of(page.text), "key": "k-not-signed-in"}
    refused = console.post(f"/act/cancel/{target['order_id']}", data=form)
    assert refused.status_code == 403 and "sign in" in refused.text
    assert sign_in(console, running, password="wrong-password").status_code == 403
    assert sign_in(console, running).status_code == 303
    assert console.post(f"/act/cancel/{target['order_id']}", data={"key": "k-no-csrf"}).status_code == 403
    forged = {**form, "key": "k-other-origin"}
    assert (
        console.post(
            f"/act/cancel/{target['order_id']}", data=forged, headers={"origin": "http://evil.example"}
        ).status_code
        == 403
    )
    assert running.call("cli", s.ORDERS_GET, {"order_id": target["order_id"]})["status"] == "CONFIRMED"
    reason = '<script>alert("x")</script> & <b>bold</b>'
    done = console.post(
        f"/act/cancel/{target['order_id']}", data={**form, "key": "k-cancel", "reason": reason}, follow_redirects=False
    )
    assert done.status_code == 303
    assert running.call("cli", s.ORDERS_GET, {"order_id": target["order_id"]})["status"] == "CANCELLED"
    shown = console.get(f"/orders/{target['order_id']}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in shown
    assert "<script>alert" not in shown
    sagas = console.get("/sagas")
    assert sagas.status_code == 200 and "saga_" in sagas.text


def test_a_cli_user_cannot_act_by_signing_in(console: TestClient, running: Running):
    page = console.get("/orders")
    creds = auth.load(running.settings, "cli")
    assert creds is not None
    form = {"csrf": csrf_of(page.text), "user": "cli", "password": creds.password}
    refused = console.post("/signin", data=form)
    assert refused.status_code == 403 and "not an operator" in refused.text


def test_what_a_page_shows_is_escaped(console: TestClient, running: Running):
    running.call(
        "admin",
        s.INVENTORY_RESTOCK,
        {"sku": "XSS-1", "qty": 3, "name": "<img src=x onerror=alert(1)>", "price_cents": 100},
        key="xss-1",
    )
    page = console.get("/stock")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text and "<img src=x" not in page.text


def test_off_loopback_every_request_carries_the_token(running: Running):
    token = "t" * 24
    with TestClient(create_app(running.settings, token=token), base_url="http://10.0.0.5:8089") as client:
        assert client.get("/orders").status_code == 401
        assert client.get("/orders", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/orders", headers={"authorization": f"Bearer {token}"}).status_code == 200
        first = client.get(f"/orders?token={token}", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/orders"
        assert client.get("/orders").status_code == 200  # the cookie it set


def test_the_timeline_puts_each_step_in_its_services_lane(running: Running):
    from bus import contract as c

    order = c.Order.model_validate(running.call("cli", s.ORDERS_GET, {"order_id": running.orders[1]["order_id"]}))
    events = running.call("cli", s.ORDERS_EVENTS, {"order_id": order.order_id})["events"]
    drawn = layout(order, events)
    assert {(b.step, b.lane) for b in drawn.bars} >= {("reserve_stock", "inventory"), ("authorize_payment", "payment")}
    assert all(0 <= b.x <= 900 and b.width > 0 for b in drawn.bars)
    assert {m.kind for m in drawn.marks} >= {"order_created", "stock_reserved", "payment_authorized", "order_confirmed"}


def test_a_shipped_and_returned_order_shows_each_of_its_sagas_on_a_timeline_of_its_own(
    console: TestClient, running: Running
):
    body = {"customer_id": "console-ship", "items": [{"sku": "KB-101", "qty": 2}], "payment_method": "card"}
    order = running.call("cli", s.ORDERS_PLACE, body, key="console-ship")
    assert order["status"] == "CONFIRMED"
    order_id = order["order_id"]
    assert running.call("admin", s.ORDERS_SHIP, {"order_id": order_id})["status"] == "SHIPPED"
    returned = running.call("admin", s.ORDERS_RETURN, {"order_id": order_id, "items": [{"sku": "KB-101", "qty": 1}]})
    (taken_back,) = returned["returns"]
    assert taken_back["status"] == "RETURNED"

    got = running.call("cli", s.ORDERS_GET, {"order_id": order_id})
    assert got["ship_saga"]["saga_id"] == got["ship_saga_id"] and got["ship_saga"]["status"] == "COMPLETED"
    assert got["returns"][0]["saga"]["saga_id"] == taken_back["return_id"]
    assert [step["step"] for step in got["returns"][0]["saga"]["steps"]] == [
        "receive_return",
        "refund_payment",
        "mark_returned",
    ]

    page = console.get(f"/orders/{order_id}").text
    assert page.count('<svg class="timeline"') == 3
    for title, saga_id in (
        ("Saga", got["saga"]["saga_id"]),
        ("Shipment saga", got["ship_saga_id"]),
        ("Return saga", taken_back["return_id"]),
    ):
        assert f'<h2>{title} <span class="id">{saga_id}</span>' in page
    for step in ("reserve_stock", "commit_stock", "capture_payment", "receive_return", "refund_payment"):
        assert f'data-step="{step}"' in page, step

    from bus import contract as c
    from cli.console.timeline import layouts

    events = running.call("cli", s.ORDERS_EVENTS, {"order_id": order_id})["events"]
    place, shipment, give_back = layouts(c.Order.model_validate(got), events)
    lanes = {(b.step, b.lane) for t in (place, shipment, give_back) for b in t.bars}
    assert lanes >= {
        ("commit_stock", "inventory"),
        ("capture_payment", "payment"),
        ("mark_shipped", "orders"),
        ("receive_return", "inventory"),
        ("refund_payment", "payment"),
    }
    # Each timeline holds its own saga's steps and events only, on an axis of its own.
    assert {b.step for b in place.bars} == {"reserve_stock", "authorize_payment", "confirm_order"}
    kinds = [[m.kind for m in t.marks] for t in (place, shipment, give_back)]
    assert kinds == [
        ["order_created", "stock_reserved", "payment_authorized", "order_confirmed"],
        ["ship_requested", "stock_committed", "payment_captured", "order_shipped"],
        ["return_requested", "stock_returned", "payment_refunded", "order_returned"],
    ]
    assert all(0 <= b.x <= 900 for t in (place, shipment, give_back) for b in t.bars)


def test_every_remote_step_of_the_order_services_sagas_has_the_lane_of_the_service_it_calls():
    from cli.console.timeline import STEP_LANES
    from order_svc.fulfil import SAGAS
    from order_svc.saga import PLACE_ORDER

    sagas = (PLACE_ORDER, *SAGAS)
    remote = {step.name: step.invoke.route.service for saga in sagas for step in saga.steps if step.invoke}
    assert STEP_LANES == remote


def test_the_command_refuses_another_interface_without_a_token_and_a_busy_port(tmp_path: Path):
    from typer.testing import CliRunner

    from cli.app import app

    runner = CliRunner()
    off = runner.invoke(app, ["--home", str(tmp_path), "console", "--host", "0.0.0.0"])
    assert off.exit_code == 2 and "not loopback" in off.output
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = runner.invoke(app, ["--home", str(tmp_path), "console", "--port", str(port)])
    assert taken.exit_code == 2 and "in use" in taken.output
