"""Metrics read back from /metrics after a scripted run, and logs that follow one order across services."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus import logs
from bus import subjects as s
from bus.client import Client
from bus.natsserver import free_port
from bus.settings import SERVICES, Settings
from cli import stack
from cli.session import request
from tests.conftest import services_in, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def place(client: Client, customer: str, items: dict[str, int], method: str = "card") -> dict[str, Any]:
    body = {"customer_id": customer, "items": [{"sku": k, "qty": q} for k, q in items.items()]}
    return await client.call(s.ORDERS_PLACE, body | {"payment_method": method}, idempotency_key=f"obs-{customer}")


@pytest.fixture
async def metered(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """The services in-process, each serving /metrics on a free port."""
    ports = {f"metrics_port_{name}": free_port() for name in SERVICES}
    metered_settings = settings.model_copy(update=ports)
    async with AsyncExitStack() as exits:
        yield await services_in(exits, metered_settings, serve_metrics=True) | {"settings": metered_settings}
    for name in SERVICES:  # the HTTP servers stopped with their services
        with pytest.raises(OSError):  # connection refused
            socket.create_connection((metered_settings.metrics_host, metered_settings.metrics_port(name)), 1).close()


async def test_metrics_count_a_scripted_run_of_two_confirmed_one_declined_one_out_of_stock(metered):
    client, settings = metered["client"], metered["settings"]
    lamps = (await client.call(s.INVENTORY_STOCK, {"sku": "LAMP-1"}))["products"][0]["available"]
    outcomes = [
        await place(client, "m1", {"KB-101": 1}),
        await place(client, "m2", {"MS-202": 2}),
        await place(client, "m3", {"KB-101": 1}, method="card_declined"),
        await place(client, "m4", {"LAMP-1": lamps + 1}),
    ]
    assert [(o["status"], o["failure_reason"]) for o in outcomes] == [
        ("CONFIRMED", None),
        ("CONFIRMED", None),
        ("FAILED", "PAYMENT_DECLINED"),
        ("FAILED", "OUT_OF_STOCK"),
    ]
    port = settings.metrics_port
    orders = await wait_for(
        lambda: (m := scrape(port("orders"))) and value(m, "oms_sagas_in_flight") == 0 and m,
        what="no saga in flight",
    )
    assert value(orders, "oms_sagas_total", outcome="completed") == 2
    assert value(orders, "oms_sagas_total", outcome="failed") == 2
    assert value(orders, "oms_saga_duration_seconds_count", outcome="completed") == 2
    assert value(orders, "oms_requests_total", endpoint="orders.place", outcome="OK") == 4
    assert value(orders, "oms_request_duration_seconds_count", endpoint="orders.place") == 4
    assert value(orders, "oms_saga_step_attempts_total", step="reserve_stock", outcome="OK") == 3
    assert value(orders, "oms_saga_step_attempts_total", step="reserve_stock", outcome="OUT_OF_STOCK") == 1
    assert value(orders, "oms_saga_step_attempts_total", step="authorize_payment", outcome="OK") == 2
    assert value(orders, "oms_saga_step_attempts_total", step="authorize_payment", outcome="PAYMENT_DECLINED") == 1
    assert value(orders, "oms_compensations_total", step="reserve_stock", outcome="OK") == 1
    assert value(orders, "oms_saga_step_retries_total", step="reserve_stock") == 0
    step_count = "oms_saga_step_duration_seconds_count"
    assert value(orders, step_count, step="reserve_stock", action="invoke") == 4
    assert value(orders, step_count, step="authorize_payment", action="invoke") == 3
    assert value(orders, step_count, step="reserve_stock", action="compensate") == 1
    assert value(orders, "oms_circuit_breaker_state", target="inventory") == 0
    assert ("oms_circuit_breaker_state", (("target", "payment"),)) in orders

    inventory, payment = scrape(port("inventory")), scrape(port("payment"))
    assert value(inventory, "oms_requests_total", endpoint="inventory.reserve", outcome="OK") == 3
    assert value(inventory, "oms_requests_total", endpoint="inventory.reserve", outcome="OUT_OF_STOCK") == 1
    assert value(inventory, "oms_requests_total", endpoint="inventory.release", outcome="OK") == 1
    assert value(payment, "oms_requests_total", endpoint="payment.authorize", outcome="OK") == 2
    assert value(payment, "oms_requests_total", endpoint="payment.authorize", outcome="PAYMENT_DECLINED") == 1
    stock = await client.call(s.INVENTORY_STOCK, {})
    for product in stock["products"]:
        assert value(inventory, "oms_stock_on_hand_units", sku=product["sku"]) == product["on_hand"]
        assert value(inventory, "oms_stock_reserved_units", sku=product["sku"]) == product["reserved"]
    assert value(inventory, "oms_stock_reserved_units", sku="KB-101") >= 1

    published = 0.0
    for name in SERVICES:
        samples = await wait_for(
            lambda name=name: (m := scrape(port(name))) and value(m, "oms_outbox_backlog_events") == 0 and m,
            what=f"{name}'s outbox drained",
        )
        assert value(samples, "oms_outbox_lag_seconds") == 0
        assert value(samples, "oms_chaos_setting", setting="error_rate") == 0
        published += value(samples, "oms_events_published_total")
    info = await metered["js"].stream_info(settings.stream_name)
    assert published == info.state.messages > 0


# -- logs -----------------------------------------------------------------------


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """The JSON lines the kernel's loggers write, with their request context, as a service writes them."""
    out = io.StringIO()
    handler = logs.handler("test", out, readable=False)
    bus_log = logging.getLogger("bus")
    previous = bus_log.level
    bus_log.addHandler(handler)
    bus_log.setLevel(logging.INFO)
    try:
        yield out
    finally:
        bus_log.removeHandler(handler)
        bus_log.setLevel(previous)


async def test_one_order_id_finds_its_request_lines_in_all_three_services(stack):
    expected = {"orders.place", "inventory.reserve", "payment.authorize", "inventory.release"}

    def request_lines(out: io.StringIO, order_id: str) -> dict[str, dict[str, Any]]:
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        mine = [line for line in lines if line.get("order_id") == order_id]
        return {line["endpoint"]: line for line in mine if line["event"] == "request"}

    with captured_logs() as out:
        order = await place(stack["client"], "log1", {"KB-101": 1}, method="card_declined")
        # A service writes its line just after its reply, so the last one may trail the answer a little.
        by_endpoint = await wait_for(
            lambda: (found := request_lines(out, order["order_id"])).keys() >= expected and found,
            what="a request line from every endpoint the order went through",
        )
    assert set(by_endpoint) == expected
    assert {line["service"] for line in by_endpoint.values()} == set(SERVICES)
    assert by_endpoint["orders.place"]["idempotency_key"] == "obs-log1"
    assert by_endpoint["orders.place"]["outcome"] == "OK"
    assert by_endpoint["payment.authorize"]["outcome"] == "PAYMENT_DECLINED"
    saga_id = "saga_" + order["order_id"].removeprefix("ord_")
    reserve = by_endpoint["inventory.reserve"]
    assert reserve["saga_id"] == saga_id and reserve["idempotency_key"] == f"{saga_id}:reserve_stock:invoke"
    assert all(line["level"] == "info" and line["duration_ms"] >= 0 for line in by_endpoint.values())
    # Reads leave no line.
    with captured_logs() as out:
        await stack["client"].call(s.ORDERS_GET, {"order_id": order["order_id"]})
    assert out.getvalue() == ""


@pytest.mark.slow
async def test_oms_up_logs_json_lines_and_one_order_id_greps_to_all_three_service_logs(tmp_path: Path):
    ports = {f"metrics_port_{name}": free_port() for name in SERVICES}
    settings = Settings(home=tmp_path / "home", **ports)
    stack_settings = stack.StackSettings(nats_port=0)
    try:
        await stack.up(settings, stack_settings)
        order = await request(
            settings,
            s.ORDERS_PLACE,
            {"customer_id": "grep1", "items": [{"sku": "KB-101", "qty": 1}]},
            timeout_s=15,
            key="grep-key-1",
        )
        assert order["status"] == "CONFIRMED"
        # The metrics port of each service answers (the services run as their own NATS users).
        assert value(scrape(settings.metrics_port("orders")), "oms_sagas_total", outcome="completed") == 1
    finally:
        await asyncio.to_thread(stack.down, settings, stack_settings)
    for name in SERVICES:
        text = (settings.home / "logs" / f"{name}.log").read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert lines and all(line["service"] == name for line in lines)
        assert len(lines) == len(text.splitlines()), f"{name} wrote a line that is not JSON"
        hits = [line for line in lines if order["order_id"] in json.dumps(line)]
        assert hits, f"{name}'s log has no line for {order['order_id']}"
