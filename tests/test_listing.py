"""The contract as `nats` users meet it: every list pages and filters alike, `$SRV.STATS` counts error
replies, health and chaos control answer whatever faults are injected, validation speaks our words, and
the JSON Schema states the limits the services enforce."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from bus import contract as c
from bus import subjects as s
from bus.errors import InvalidRequest, PaymentDeclined
from bus.settings import SERVICES, Limits
from tests.conftest import ask


def id_time(ident: str) -> datetime:
    """The creation time an id begins with (`bus.ids.new_id`)."""
    return datetime.fromtimestamp(int(ident.split("_", 1)[1][:12], 16) / 1000, UTC)


async def place(stack: dict[str, Any], customer: str, sku: str = "KB-101", method: str = "card") -> dict[str, Any]:
    body = {"customer_id": customer, "items": [{"sku": sku, "qty": 1}], "payment_method": method}
    return await stack["client"].call(s.ORDERS_PLACE, body, idempotency_key=str(uuid.uuid4()))


async def listed(stack: dict[str, Any], route: s.Route, key: str, ident: str, **query: Any) -> list[str]:
    body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in query.items()}
    raw = await ask(stack["nc"], route.subject, body)
    assert raw[0]["ok"], raw
    return [item[ident] for item in raw[0]["result"][key]]


async def test_every_list_pages_with_before_and_after_and_a_window_of_creation_times(stack):
    orders = [await place(stack, f"cust-{i % 2}", method="card_declined" if i == 4 else "card") for i in range(5)]
    ids = [o["order_id"] for o in reversed(orders)]  # newest first
    sagas = ["saga_" + i.removeprefix("ord_") for i in ids]
    middle = id_time(ids[2])

    # orders.list: newest first; `before` pages on, `after` bounds from below, since/until by creation.
    assert await listed(stack, s.ORDERS_LIST, "orders", "order_id", limit=2) == ids[:2]
    assert await listed(stack, s.ORDERS_LIST, "orders", "order_id", limit=2, before=ids[1]) == ids[2:4]
    assert await listed(stack, s.ORDERS_LIST, "orders", "order_id", after=ids[3]) == ids[:3]
    assert await listed(stack, s.ORDERS_LIST, "orders", "order_id", after=ids[4], before=ids[0]) == ids[1:4]
    assert set(await listed(stack, s.ORDERS_LIST, "orders", "order_id", since=middle)) >= set(ids[:3])
    assert await listed(stack, s.ORDERS_LIST, "orders", "order_id", until=middle) == [
        i for i in ids if id_time(i) < middle
    ]
    by_customer = await listed(stack, s.ORDERS_LIST, "orders", "order_id", customer_id="cust-1")
    assert by_customer == [o["order_id"] for o in reversed(orders) if o["customer_id"] == "cust-1"]

    # orders.saga.list: the same window on saga ids, and the customer of the saga's order.
    assert await listed(stack, s.SAGA_LIST, "sagas", "saga_id", limit=2, before=sagas[1]) == sagas[2:4]
    assert await listed(stack, s.SAGA_LIST, "sagas", "saga_id", after=sagas[2]) == sagas[:2]
    assert await listed(stack, s.SAGA_LIST, "sagas", "saga_id", until=middle) == [
        i for i in sagas if id_time(i) < middle
    ]
    assert await listed(stack, s.SAGA_LIST, "sagas", "saga_id", customer_id="cust-1") == [
        "saga_" + i.removeprefix("ord_") for i in by_customer
    ]
    assert await listed(stack, s.SAGA_LIST, "sagas", "saga_id", status="FAILED") == [sagas[0]]

    # payment.list and inventory.reservations: by order id, newest first when asked, windowed by their time.
    paid = await listed(stack, s.PAYMENT_LIST, "payments", "order_id", order="desc")
    assert paid == ids
    assert await listed(stack, s.PAYMENT_LIST, "payments", "order_id", order="desc", limit=2, before=ids[1]) == ids[2:4]
    assert await listed(stack, s.PAYMENT_LIST, "payments", "order_id", customer_id="cust-0", status="AUTHORIZED") == [
        o["order_id"] for o in orders if o["customer_id"] == "cust-0" and o["status"] == "CONFIRMED"
    ]
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert await listed(stack, s.PAYMENT_LIST, "payments", "order_id", since=later) == []
    assert await listed(stack, s.PAYMENT_LIST, "payments", "order_id", until=later) == sorted(ids)
    held = await listed(stack, s.INVENTORY_RESERVATIONS, "reservations", "order_id", order="desc", status="ACTIVE")
    assert held == [i for i, o in zip(ids, reversed(orders), strict=True) if o["status"] == "CONFIRMED"]
    assert await listed(stack, s.INVENTORY_RESERVATIONS, "reservations", "order_id", since=later) == []
    assert await listed(stack, s.INVENTORY_RESERVATIONS, "reservations", "order_id", after=ids[1]) == [ids[0]]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"since": "yesterday"}, "since", "must be a time in RFC 3339"),
        ({"since": "2026-11-26T14:00:00"}, "since", "must be a time in RFC 3339"),  # no zone: ambiguous
        ({"since": "2026-11-26T14:00:00Z", "until": "2026-11-26T13:00:00Z"}, "until", "must be after since"),
        ({"before": "ord_1", "after": "ord_2"}, "after", "must be below before"),
        ({"limit": 0}, "limit", "at least 1"),
        ({"limit": "5"}, "limit", "must be a whole number"),
    ],
)
async def test_a_window_that_makes_no_sense_is_a_validation_error_naming_its_field(stack, body, field, words):
    for subject in ("orders.list", "orders.saga.list", "payment.list", "inventory.reservations"):
        reply, _ = await ask(stack["nc"], subject, body)
        assert reply["ok"] is False and reply["error"]["code"] == "VALIDATION_ERROR", (subject, reply)
        assert [e["field"] for e in reply["error"]["details"]["errors"]] == [field], (subject, reply)
        assert f"{field}: {words}" in reply["error"]["message"], (subject, reply)


async def test_srv_stats_counts_every_error_reply_in_micros_own_fields(stack):
    nc = stack["nc"]
    # A business outcome (402), a refused request (400) and a key reused for another request (409).
    with pytest.raises(PaymentDeclined):
        await stack["client"].call(
            s.PAYMENT_AUTHORIZE,
            {"order_id": "o-st", "customer_id": "c1", "amount_cents": 1, "currency": "USD", "method": "card_declined"},
        )
    with pytest.raises(InvalidRequest):
        await stack["client"].call(s.PAYMENT_GET, {"order_id": "not valid"})
    await stack["client"].call(s.INVENTORY_RESTOCK, {"sku": "KB-101", "qty": 1}, idempotency_key="stats-key")
    conflict, _ = await ask(nc, "inventory.restock", {"sku": "KB-101", "qty": 2}, key="stats-key")
    assert conflict["error"]["code"] == "CONFLICT"

    def endpoint(stats: dict[str, Any], name: str) -> dict[str, Any]:
        return next(e for e in stats["endpoints"] if e["name"] == name)

    payment = json.loads((await nc.request("$SRV.STATS.payment", b"", timeout=2)).data)
    authorize, get = endpoint(payment, "authorize"), endpoint(payment, "get")
    assert authorize["num_errors"] == 1 and authorize["last_error"].startswith("402:")
    assert authorize["data"]["errors_by_code"] == {"PAYMENT_DECLINED": 1}
    assert get["num_errors"] == 1 and get["last_error"].startswith("400:invalid request: order_id:")
    assert authorize["processing_time"] > 0 and authorize["average_processing_time"] > 0
    inventory = json.loads((await nc.request("$SRV.STATS.inventory", b"", timeout=2)).data)
    restock = endpoint(inventory, "restock")
    assert (restock["num_requests"], restock["num_errors"]) == (2, 1) and restock["last_error"].startswith("409:")
    assert endpoint(inventory, "stock")["num_errors"] == 0


async def test_health_and_chaos_control_answer_whatever_faults_are_injected(stack):
    nc = stack["nc"]
    every_fault = {"error_rate": 1, "drop_reply_rate": 1, "endpoints": ["authorize", "health", "get"]}
    reply, _ = await ask(nc, "chaos.payment.set", every_fault)
    assert reply["ok"] and reply["result"]["active"]
    try:
        health, _ = await ask(nc, "payment.health", {})
        assert health["ok"] and health["result"]["chaos"]["error_rate"] == 1, health
        got, _ = await ask(nc, "chaos.payment.get", {})
        assert got["ok"] and got["result"]["drop_reply_rate"] == 1
        await ask(nc, "chaos.payment.set", {"error_rate": 1})  # every business endpoint, health still not
        health, _ = await ask(nc, "payment.health", {})
        assert health["ok"] and health["result"]["chaos"]["active"]
        failed, _ = await ask(nc, "payment.get", {"order_id": "o1"})
        assert failed["error"]["code"] == "UNAVAILABLE"
    finally:
        cleared, _ = await ask(nc, "chaos.payment.clear", {})
    assert cleared["ok"] and not cleared["result"]["active"]


async def test_srv_info_carries_the_contracts_version(stack):
    for name in SERVICES:
        info = json.loads((await stack["nc"].request(f"$SRV.INFO.{name}", b"", timeout=2)).data)
        assert info["metadata"] == {"api": c.API_VERSION}


@pytest.mark.parametrize(
    ("body", "message", "problem"),
    [
        (
            {"customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1001}]},
            "invalid request: items[0].qty: at most 1000 per line",
            {"field": "items[0].qty", "message": "at most 1000 per line", "type": "value_error"},
        ),
        (
            {"items": [{"sku": "KB-101", "qty": 1}]},
            "invalid request: customer_id: required",
            {"field": "customer_id", "message": "required", "type": "missing"},
        ),
        (
            {"customer_id": "c1", "items": [{"sku": "KB-101", "qty": "2"}]},
            "invalid request: items[0].qty: must be a whole number",
            {"field": "items[0].qty", "message": "must be a whole number", "type": "int_type"},
        ),
        (
            {"customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}], "coupon": "x"},
            "invalid request: coupon: not a field of this request",
            {"field": "coupon", "message": "not a field of this request", "type": "extra_forbidden"},
        ),
        (
            {"customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}], "payment_method": "cash"},
            "invalid request: payment_method: must be one of 'card', 'card_declined' or 'card_insufficient_funds'",
            {
                "field": "payment_method",
                "message": "must be one of 'card', 'card_declined' or 'card_insufficient_funds'",
                "type": "literal_error",
            },
        ),
    ],
)
async def test_validation_errors_are_in_our_words_not_pydantics(stack, body, message, problem):
    reply, headers = await ask(stack["nc"], "orders.place", body)
    assert reply["error"]["message"] == message
    assert reply["error"]["details"]["errors"] == [problem]
    assert "Value error" not in json.dumps(reply) and "Input should" not in json.dumps(reply)
    assert headers["Nats-Service-Error-Code"] == "400"


@pytest.mark.parametrize("limits", [Limits(), Limits(max_qty_per_line=5, max_items_per_order=2)])
def test_the_json_schema_states_the_limits_the_services_enforce(limits: Limits):
    schema = c.schemas(limits)
    line = schema["PlaceOrder"]["$defs"]["Line"]["properties"]["qty"]
    assert line["maximum"] == limits.max_qty_per_line
    for name in ("PlaceOrder", "CheckStock", "Reserve"):
        assert schema[name]["properties"]["items"]["maxItems"] == limits.max_items_per_order
    assert "maxItems" not in schema["Order"]["properties"]["items"]  # a result's lines are not an input

    def lines(n: int, qty: int) -> str:
        return json.dumps({"customer_id": "c1", "items": [{"sku": f"S{i}", "qty": qty} for i in range(n)]})

    context = {"limits": limits}
    c.PlaceOrder.model_validate_json(lines(limits.max_items_per_order, limits.max_qty_per_line), context=context)
    for too_much in (lines(1, limits.max_qty_per_line + 1), lines(limits.max_items_per_order + 1, 1)):
        with pytest.raises(ValidationError):
            c.PlaceOrder.model_validate_json(too_much, context=context)


def test_a_saga_that_turned_back_shows_its_retrying_step_as_abandoned():
    steps = [
        {"step": "reserve_stock", "action": "invoke", "status": "SUCCEEDED", "attempts": 1},
        {"step": "authorize_payment", "action": "invoke", "status": "RETRYING", "attempts": 5, "uncertain": True},
        {"step": "reserve_stock", "action": "compensate", "status": "RETRYING", "attempts": 2},
    ]
    running = c.SagaView(saga_id="saga_1", name="place_order", status="RUNNING", steps=steps[:2])
    assert [step.status for step in running.steps] == ["SUCCEEDED", "RETRYING"]  # still being tried
    for status in ("COMPENSATING", "FAILED", "CANCELLED"):
        turned = c.SagaView(saga_id="saga_1", name="place_order", status=status, steps=steps)
        assert [step.status for step in turned.steps] == ["SUCCEEDED", "ABANDONED", "RETRYING"]
        assert turned.steps[1].uncertain  # it may still have taken effect: it is compensated either way
