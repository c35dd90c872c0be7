"""The order past confirmation, end to end on a real nats-server: shipping it (the stock leaves, the money is
taken) and taking units back (the stock returns, their value is refunded), through faults and races, each
test ending with the audit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bus import subjects as s
from bus.audit import run_audit
from bus.errors import Conflict, InvalidRequest, NotFound
from bus.settings import Settings
from tests import conftest


async def stock_of(stack: dict[str, Any], sku: str) -> dict[str, Any]:
    return (await stack["client"].call(s.INVENTORY_STOCK, {"sku": sku}))["products"][0]


async def payment_of(stack: dict[str, Any], order_id: str) -> dict[str, Any]:
    return await stack["client"].call(s.PAYMENT_GET, {"order_id": order_id})


async def reservation_of(stack: dict[str, Any], order_id: str) -> dict[str, Any]:
    found = await stack["client"].call(s.INVENTORY_RESERVATIONS, {"order_id": order_id})
    return found["reservations"][0]


async def ship(stack: dict[str, Any], order_id: str, key: str | None = None, **extra: Any) -> dict[str, Any]:
    return await stack["client"].call(s.ORDERS_SHIP, {"order_id": order_id, **extra}, idempotency_key=key)


async def give_back(stack: dict[str, Any], order_id: str, *lines: tuple[str, int], key: str | None = None):
    body: dict[str, Any] = {"order_id": order_id}
    if lines:
        body["items"] = [{"sku": sku, "qty": qty} for sku, qty in lines]
    return await stack["client"].call(s.ORDERS_RETURN, body, idempotency_key=key)


async def audit_clean(stack: dict[str, Any], settings: Settings) -> None:
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    assert report.ok, json.dumps(report.to_dict(), indent=1)


async def chaos(stack: dict[str, Any], service: str, **config: Any) -> None:
    await stack["client"].request(f"chaos.{service}.set", config)


async def confirmed(stack: dict[str, Any], *lines: tuple[str, int]) -> dict[str, Any]:
    order = await conftest.place(stack, items=lines or (("KB-101", 2),))
    assert order["status"] == "CONFIRMED", order
    return order


async def test_shipping_commits_the_stock_and_captures_the_total(stack, settings):
    before = await stock_of(stack, "KB-101")
    order = await confirmed(stack, ("KB-101", 2))
    shipped = await ship(stack, order["order_id"])
    assert shipped["status"] == "SHIPPED" and shipped["shipped_at"] and shipped["ship_saga_id"]
    after = await stock_of(stack, "KB-101")
    assert (after["on_hand"], after["reserved"]) == (before["on_hand"] - 2, before["reserved"])
    reservation = await reservation_of(stack, order["order_id"])
    assert reservation["status"] == "COMMITTED" and reservation["commit_id"] == shipped["ship_saga_id"]
    payment = await payment_of(stack, order["order_id"])
    assert (payment["status"], payment["captured_cents"]) == ("CAPTURED", order["total_cents"])
    await audit_clean(stack, settings)


async def events_of(stack: dict[str, Any], order_id: str) -> list[dict[str, Any]]:
    return (await stack["client"].call(s.ORDERS_EVENTS, {"order_id": order_id}))["events"]


async def test_every_event_of_an_order_names_the_saga_it_belongs_to_participants_too(stack, settings):
    order = await confirmed(stack, ("KB-101", 2))
    shipped = await ship(stack, order["order_id"])
    (taken_back,) = (await give_back(stack, order["order_id"], ("KB-101", 1)))["returns"]
    got = await stack["client"].call(s.ORDERS_GET, {"order_id": order["order_id"]})
    place, shipment, give = got["saga"]["saga_id"], shipped["ship_saga_id"], taken_back["return_id"]
    named = [(e["type"], e["saga_id"]) for e in await events_of(stack, order["order_id"])]
    assert named == [
        ("order_created", place),
        ("stock_reserved", place),
        ("payment_authorized", place),
        ("order_confirmed", place),
        ("ship_requested", shipment),
        ("stock_committed", shipment),
        ("payment_captured", shipment),
        ("order_shipped", shipment),
        ("return_requested", give),
        ("stock_returned", give),
        ("payment_refunded", give),
        ("order_returned", give),
    ]
    declined = await conftest.place(stack, method="card_declined")
    assert declined["status"] == "FAILED", declined
    saga_id = (await stack["client"].call(s.ORDERS_GET, {"order_id": declined["order_id"]}))["saga"]["saga_id"]
    undone = await events_of(stack, declined["order_id"])
    assert "stock_released" in [e["type"] for e in undone]  # a compensation's event names its saga too
    assert {e["saga_id"] for e in undone} == {saga_id}
    await audit_clean(stack, settings)


async def test_shipping_again_answers_the_one_shipment(stack, settings):
    order = await confirmed(stack)
    first = await ship(stack, order["order_id"], key="ship-1")
    again = await ship(stack, order["order_id"], key="ship-1")
    other = await ship(stack, order["order_id"])  # another key: the order is shipped already
    assert first["ship_saga_id"] == again["ship_saga_id"] == other["ship_saga_id"]
    assert (await payment_of(stack, order["order_id"]))["captured_cents"] == order["total_cents"]
    await audit_clean(stack, settings)


async def test_only_a_confirmed_order_ships_and_nothing_changes_otherwise(stack, settings):
    failed = await conftest.place(stack, items=(("MS-202", 1),), method="card_declined")
    cancelled = await confirmed(stack)
    await stack["client"].call(s.ORDERS_CANCEL, {"order_id": cancelled["order_id"]})
    before = await stock_of(stack, "MS-202")
    for order in (failed, cancelled):
        with pytest.raises(Conflict, match="only a CONFIRMED order ships"):
            await ship(stack, order["order_id"])
    with pytest.raises(NotFound):
        await ship(stack, "ord_nope")
    for body in ({"order_id": "../x"}, {"order_id": "o1", "wait_ms": -1}, {"order_id": "o1", "extra": 1}, {}):
        with pytest.raises(InvalidRequest):
            await stack["client"].call(s.ORDERS_SHIP, body)
    assert await stock_of(stack, "MS-202") == before
    await audit_clean(stack, settings)


async def test_a_shipped_order_is_not_cancelled_but_returned(stack, settings):
    order = await confirmed(stack)
    await ship(stack, order["order_id"])
    with pytest.raises(Conflict, match="oms order return"):
        await stack["client"].call(s.ORDERS_CANCEL, {"order_id": order["order_id"]})
    assert (await payment_of(stack, order["order_id"]))["status"] == "CAPTURED"
    await audit_clean(stack, settings)


async def test_a_cancel_racing_a_ship_one_wins_and_the_audit_is_clean(stack, settings):
    outcomes = []
    for _ in range(6):
        order = await confirmed(stack, ("MS-202", 1))
        cancel = stack["client"].call(s.ORDERS_CANCEL, {"order_id": order["order_id"]})
        shipping = ship(stack, order["order_id"])
        results = await asyncio.gather(cancel, shipping, return_exceptions=True)
        for result in results:
            assert not isinstance(result, Exception) or isinstance(result, Conflict), result
        final = await stack["client"].call(s.ORDERS_GET, {"order_id": order["order_id"]})
        assert final["status"] in ("CANCELLED", "SHIPPED"), final
        outcomes.append(final["status"])
        payment = await payment_of(stack, order["order_id"])
        assert payment["status"] == ("VOIDED" if final["status"] == "CANCELLED" else "CAPTURED"), payment
    await audit_clean(stack, settings)


async def test_a_dropped_capture_reply_is_sent_again_and_captures_once(stack, settings):
    order = await confirmed(stack)
    await chaos(stack, "payment", drop_reply_rate=1.0, endpoints=["capture"])
    shipping = asyncio.create_task(ship(stack, order["order_id"], wait_ms=30_000))

    async def retried() -> bool:
        got = await stack["client"].call(s.ORDERS_GET, {"order_id": order["order_id"]})
        return got["status"] == "SHIPPING" and (await payment_of(stack, order["order_id"]))["status"] == "CAPTURED"

    await conftest.wait_for(retried, timeout=20, what="the capture to happen with its reply dropped")
    await stack["client"].request("chaos.payment.clear", {})
    shipped = await shipping
    assert shipped["status"] == "SHIPPED"
    payment = await payment_of(stack, order["order_id"])
    assert (payment["status"], payment["captured_cents"]) == ("CAPTURED", order["total_cents"])
    await audit_clean(stack, settings)


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sagas that give up after 3 s (set before the stack's settings are read)."""
    monkeypatch.setenv("OMS_SAGA__DEADLINE_MS", "3000")
    monkeypatch.setenv("OMS_SAGA__STEP_TIMEOUT_MS", "300")


async def test_a_capture_that_never_succeeds_turns_the_shipment_back_and_it_can_ship_again(
    short_deadline, stack, settings
):
    order = await confirmed(stack, ("HD-404", 1))
    before = await stock_of(stack, "HD-404")
    await chaos(stack, "payment", error_rate=1.0, endpoints=["capture"])
    turned = await ship(stack, order["order_id"], wait_ms=60_000)
    assert turned["status"] == "CONFIRMED" and turned["ship_failure"], turned
    assert await stock_of(stack, "HD-404") == before  # the commit was undone
    assert (await reservation_of(stack, order["order_id"]))["status"] == "ACTIVE"
    payment = await payment_of(stack, order["order_id"])
    assert (payment["status"], payment["captured_cents"]) == ("AUTHORIZED", 0)
    await audit_clean(stack, settings)

    await stack["client"].request("chaos.payment.clear", {})
    again = await ship(stack, order["order_id"])
    assert again["status"] == "SHIPPED" and again["ship_saga_id"] != turned["ship_saga_id"]
    await audit_clean(stack, settings)


async def test_returns_add_up_to_what_shipped_and_refund_its_value(stack, settings):
    order = await confirmed(stack, ("KB-101", 3), ("MS-202", 1))
    prices = {line["sku"]: line["unit_price_cents"] for line in order["items"]}
    await ship(stack, order["order_id"])
    shipped_stock = await stock_of(stack, "KB-101")

    first = await give_back(stack, order["order_id"], ("KB-101", 1))
    assert first["status"] == "PARTIALLY_RETURNED" and first["refunded_cents"] == prices["KB-101"]
    assert (await stock_of(stack, "KB-101"))["on_hand"] == shipped_stock["on_hand"] + 1
    with pytest.raises(Conflict, match="2 left to return"):
        await give_back(stack, order["order_id"], ("KB-101", 3))
    rest = await give_back(stack, order["order_id"])  # everything not returned yet
    assert rest["status"] == "RETURNED" and rest["refunded_cents"] == order["total_cents"]
    assert [r["status"] for r in rest["returns"]] == ["RETURNED", "RETURNED"]
    payment = await payment_of(stack, order["order_id"])
    assert (payment["status"], payment["refunded_cents"]) == ("REFUNDED", order["total_cents"])
    with pytest.raises(Conflict, match="nothing left to return"):
        await give_back(stack, order["order_id"])
    await audit_clean(stack, settings)


async def test_a_bad_return_is_refused_with_a_clear_error_and_changes_nothing(stack, settings):
    order = await confirmed(stack, ("KB-101", 1))
    with pytest.raises(Conflict, match="only a shipped order"):
        await give_back(stack, order["order_id"], ("KB-101", 1))
    await ship(stack, order["order_id"])
    before = (await stock_of(stack, "KB-101"), await payment_of(stack, order["order_id"]))
    with pytest.raises(InvalidRequest, match="no line of MS-202"):
        await give_back(stack, order["order_id"], ("MS-202", 1))
    with pytest.raises(Conflict, match="1 left to return"):
        await give_back(stack, order["order_id"], ("KB-101", 2))
    bad = [
        {"order_id": order["order_id"], "items": [{"sku": "KB-101", "qty": -1}]},
        {"order_id": order["order_id"], "items": [{"sku": "KB-101", "qty": 0}]},
        {"order_id": order["order_id"], "items": []},
        {"order_id": order["order_id"], "items": [{"sku": "KB-101", "qty": 1}, {"sku": "KB-101", "qty": 1}]},
        {"order_id": order["order_id"], "items": [{"sku": "kb 101", "qty": 1}]},
    ]
    for body in bad:
        with pytest.raises(InvalidRequest):
            await stack["client"].call(s.ORDERS_RETURN, body)
    got = await stack["client"].call(s.ORDERS_GET, {"order_id": order["order_id"]})
    assert got["status"] == "SHIPPED" and got["returns"] == []
    assert (await stock_of(stack, "KB-101"), await payment_of(stack, order["order_id"])) == before
    await audit_clean(stack, settings)


async def test_returns_racing_for_the_same_units_never_refund_more_than_shipped(stack, settings):
    order = await confirmed(stack, ("MS-202", 2))
    await ship(stack, order["order_id"])
    results = await asyncio.gather(
        *(give_back(stack, order["order_id"], ("MS-202", 1)) for _ in range(5)), return_exceptions=True
    )
    passed = [r for r in results if not isinstance(r, Exception)]
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception)), results
    assert len(passed) == 2
    payment = await payment_of(stack, order["order_id"])
    assert payment["refunded_cents"] == order["total_cents"] == payment["captured_cents"]
    await audit_clean(stack, settings)


async def test_a_return_repeated_with_its_key_is_one_return(stack, settings):
    order = await confirmed(stack, ("KB-101", 2))
    await ship(stack, order["order_id"])
    first = await give_back(stack, order["order_id"], ("KB-101", 1), key="back-1")
    again = await give_back(stack, order["order_id"], ("KB-101", 1), key="back-1")
    assert [r["return_id"] for r in first["returns"]] == [r["return_id"] for r in again["returns"]]
    assert len(again["returns"]) == 1
    with pytest.raises(Conflict):  # the same key for another return
        await give_back(stack, order["order_id"], ("KB-101", 2), key="back-1")
    await audit_clean(stack, settings)


async def test_a_non_resellable_return_is_refunded_but_stays_off_hand(stack, settings):
    await stack["client"].call(s.INVENTORY_PRODUCT, {"sku": "WC-707", "resellable": False})
    order = await confirmed(stack, ("WC-707", 2))
    await ship(stack, order["order_id"])
    before = await stock_of(stack, "WC-707")
    back = await give_back(stack, order["order_id"], ("WC-707", 2))
    assert back["status"] == "RETURNED" and back["refunded_cents"] == order["total_cents"]
    assert await stock_of(stack, "WC-707") == before
    await audit_clean(stack, settings)


async def test_the_audit_sees_a_shipment_without_its_capture(stack, settings):
    """The restated invariant can fail: money taken back behind the order's back is found."""
    order = await confirmed(stack, ("KB-101", 1))
    await ship(stack, order["order_id"])
    await stack["client"].call(
        s.PAYMENT_REFUND,
        {"order_id": order["order_id"], "refund_id": "behind-its-back", "amount_cents": order["total_cents"]},
    )
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    found = [v for check in report.to_dict()["checks"] for v in check["offending"]]
    assert any(order["order_id"] in v for v in found), found


def sample(kernel: Any, name: str, **labels: str) -> float:
    return kernel.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_metrics_count_shipments_returns_and_the_money_once(stack, settings):
    order = await confirmed(stack, ("KB-101", 2))
    unit = order["items"][0]["unit_price_cents"]
    await ship(stack, order["order_id"], key="ship-m")
    await ship(stack, order["order_id"], key="ship-m")  # a repeat moves nothing
    capture = {"order_id": order["order_id"], "capture_id": (await payment_of(stack, order["order_id"]))["capture_id"]}
    await stack["client"].call(s.PAYMENT_CAPTURE, capture)  # nor does a capture repeated by its id
    await give_back(stack, order["order_id"], ("KB-101", 1))
    payment, orders = stack["payment"], stack["orders"]
    assert sample(payment, "oms_payment_cents_total", kind="captured") == order["total_cents"]
    assert sample(payment, "oms_payment_cents_total", kind="refunded") == unit
    assert sample(payment, "oms_payment_cents_total", kind="authorized") == order["total_cents"]
    assert sample(orders, "oms_saga_runs_total", saga="ship_order", outcome="completed") == 1
    assert sample(orders, "oms_saga_runs_total", saga="return_order", outcome="completed") == 1
    assert sample(orders, "oms_saga_runs_total", saga="place_order", outcome="completed") == 1
