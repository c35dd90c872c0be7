"""Orders end to end, with the three services on a real nats-server."""

from __future__ import annotations

import asyncio
import functools
import json

import pytest

from bus import subjects as s
from bus.audit import run_audit
from bus.errors import Conflict, InvalidRequest, NotFound
from tests import conftest

place = functools.partial(conftest.place, items=(("KB-101", 2),))  # two units, unless a test says other lines


async def stock_of(stack, sku):
    result = await stack["client"].call(s.INVENTORY_STOCK, {"sku": sku})
    return result["products"][0]


async def assert_audit_clean(stack, settings):
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    assert report.ok, json.dumps(report.to_dict(), indent=1)
    return report


async def test_a_happy_order_is_confirmed_with_its_total_and_the_stock_moves(stack, settings):
    before = await stock_of(stack, "KB-101")
    order = await place(stack)
    assert order["status"] == "CONFIRMED"
    assert order["total_cents"] == 2 * before["price_cents"]
    after = await stock_of(stack, "KB-101")
    assert after["reserved"] == before["reserved"] + 2
    payment = await stack["client"].call(s.PAYMENT_GET, {"order_id": order["order_id"]})
    assert payment["status"] == "AUTHORIZED" and payment["amount_cents"] == order["total_cents"]
    await assert_audit_clean(stack, settings)


async def test_out_of_stock_fails_and_nothing_is_reserved_or_charged(stack, settings):
    before = await stock_of(stack, "LAMP-1")
    order = await place(stack, items=(("LAMP-1", before["available"] + 1),))
    assert order["status"] == "FAILED" and order["failure_reason"] == "OUT_OF_STOCK"
    assert await stock_of(stack, "LAMP-1") == before
    with pytest.raises(NotFound):
        await stack["client"].call(s.PAYMENT_GET, {"order_id": order["order_id"]})
    await assert_audit_clean(stack, settings)


async def test_payment_declined_releases_the_reservation(stack, settings):
    before = await stock_of(stack, "MS-202")
    order = await place(stack, items=(("MS-202", 3),), method="card_declined")
    assert order["status"] == "FAILED" and order["failure_reason"] == "PAYMENT_DECLINED"
    assert await stock_of(stack, "MS-202") == before
    await assert_audit_clean(stack, settings)


async def test_the_same_idempotency_key_gives_one_order_and_one_charge(stack, settings):
    first, second = await asyncio.gather(place(stack, key="k-42"), place(stack, key="k-42"))
    third = await place(stack, key="k-42")
    assert first["order_id"] == second["order_id"] == third["order_id"]
    orders = await stack["client"].call(s.ORDERS_LIST, {"customer_id": "c1"})
    assert [o["order_id"] for o in orders["orders"]] == [first["order_id"]]
    with pytest.raises(Conflict):
        await place(stack, key="k-42", items=(("MS-202", 1),))
    await assert_audit_clean(stack, settings)


async def test_wait_ms_zero_answers_at_once_and_the_saga_goes_on(stack, settings):
    order = await place(stack, wait_ms=0)
    assert order["status"] in ("PENDING", "CONFIRMED")
    for _ in range(200):
        current = await stack["client"].call(s.ORDERS_GET, {"order_id": order["order_id"]})
        if current["status"] == "CONFIRMED":
            break
        await asyncio.sleep(0.02)
    assert current["status"] == "CONFIRMED"
    assert [step["step"] for step in current["saga"]["steps"]] == [
        "reserve_stock",
        "authorize_payment",
        "confirm_order",
    ]


async def test_cancelling_a_confirmed_order_refunds_and_releases(stack, settings):
    before = await stock_of(stack, "HD-404")
    order = await place(stack, items=(("HD-404", 1),))
    cancelled = await stack["client"].call(s.ORDERS_CANCEL, {"order_id": order["order_id"], "reason": "changed mind"})
    assert cancelled["status"] == "CANCELLED" and cancelled["cancel_reason"] == "changed mind"
    assert await stock_of(stack, "HD-404") == before
    payment = await stack["client"].call(s.PAYMENT_GET, {"order_id": order["order_id"]})
    assert payment["status"] == "VOIDED"  # a cancel before shipment voids the authorization
    again = await stack["client"].call(s.ORDERS_CANCEL, {"order_id": order["order_id"]})
    assert again["status"] == "CANCELLED"
    await assert_audit_clean(stack, settings)


async def test_a_failed_order_cannot_be_cancelled(stack):
    order = await place(stack, method="card_declined")
    with pytest.raises(Conflict):
        await stack["client"].call(s.ORDERS_CANCEL, {"order_id": order["order_id"]})


async def test_the_timeline_tells_each_story(stack):
    ok = await place(stack)
    declined = await place(stack, method="card_declined")
    events = await stack["client"].call(s.ORDERS_EVENTS, {"order_id": ok["order_id"]})
    assert [e["type"] for e in events["events"]] == [
        "order_created",
        "stock_reserved",
        "payment_authorized",
        "order_confirmed",
    ]
    events = await stack["client"].call(s.ORDERS_EVENTS, {"order_id": declined["order_id"]})
    assert [e["type"] for e in events["events"]] == [
        "order_created",
        "stock_reserved",
        "payment_declined",
        "step_failed",
        "order_compensating",
        "stock_released",
        "step_compensated",
        "order_failed",
    ]


async def test_an_event_stored_twice_is_named_by_the_audit_and_told_once_in_the_timeline(stack, settings):
    js, stream = stack["js"], settings.stream_name
    ok, other = await place(stack), await place(stack)
    # Copies with the event id of one already stored, published without Nats-Msg-Id (the stream cannot
    # drop them), as an outbox sent again after the duplicate window stores them: one of an order's
    # creation, one of a restock (a SKU has several of those: only the ids tell the copy).
    created = await js.get_last_msg(stream, f"events.orders.order_created.{ok['order_id']}")
    restock = await js.get_last_msg(stream, "events.inventory.stock_restocked.KB-101")
    copies = [(m, await js.publish(m.subject, m.data, stream=stream)) for m in (created, restock)]
    # And a second reservation of one order under an id of its own: an order has one.
    reserved = await js.get_last_msg(stream, f"events.inventory.stock_reserved.{other['order_id']}")
    forged = json.loads(reserved.data) | {"event_id": "evt_forged"}
    await js.publish(reserved.subject, json.dumps(forged).encode(), stream=stream)

    report = await run_audit(stack["client"], js, stream, settings.saga)
    assert all(not check.violations for check in report.checks if check.number != 6)
    twice = [f"{m.subject}: event {json.loads(m.data)['event_id']} stored 2 times" for m, _ in copies]
    expected = [f"{text} (stream sequences {m.seq}, {ack.seq})" for text, (m, ack) in zip(twice, copies, strict=True)]
    expected.append(f"{reserved.subject}: 2 different stock_reserved events, one expected")
    assert sorted(report.checks[5].violations) == sorted(expected)
    events = await stack["client"].call(s.ORDERS_EVENTS, {"order_id": ok["order_id"]})
    assert [e["type"] for e in events["events"]] == [
        "order_created",
        "stock_reserved",
        "payment_authorized",
        "order_confirmed",
    ]
    assert events["events"][0]["seq"] == created.seq  # the first one stored stands


async def test_orders_list_filters_and_pages(stack):
    placed = [await place(stack, customer=f"pager-{i % 2}") for i in range(5)]
    listed = await stack["client"].call(s.ORDERS_LIST, {"customer_id": "pager-0"})
    assert [o["order_id"] for o in listed["orders"]] == [o["order_id"] for o in reversed(placed[::2])]
    page = await stack["client"].call(s.ORDERS_LIST, {"limit": 2, "before": placed[-1]["order_id"]})
    assert [o["order_id"] for o in page["orders"]] == [placed[3]["order_id"], placed[2]["order_id"]]
    with pytest.raises(InvalidRequest):
        await stack["client"].call(s.ORDERS_LIST, {"status": "LOST"})


async def test_concurrent_orders_for_scarce_stock_never_oversell(stack, settings):
    await stack["client"].call(
        s.INVENTORY_RESTOCK, {"sku": "SCARCE-1", "qty": 10, "name": "Scarce", "price_cents": 100}
    )
    orders = await asyncio.gather(*(place(stack, customer=f"c{i}", items=(("SCARCE-1", 1),)) for i in range(200)))
    statuses = [o["status"] for o in orders]
    assert statuses.count("CONFIRMED") == 10
    assert statuses.count("FAILED") == 190
    product = await stock_of(stack, "SCARCE-1")
    assert product["reserved"] == 10 and product["available"] == 0
    await assert_audit_clean(stack, settings)


async def test_each_service_reports_its_health(stack):
    await place(stack)
    for service in ("orders", "inventory", "payment"):
        health = await stack["client"].call(s.HEALTH[service], {})
        assert health["service"] == service and health["outbox_backlog"] == 0
        assert health["chaos"]["active"] is False
    orders = await stack["client"].call(s.ORDERS_HEALTH, {})
    assert orders["breakers"] == {"inventory": "closed", "payment": "closed"}
    assert orders["sagas_in_flight"] == 0


async def test_the_audit_flags_an_open_order_that_no_saga_will_finish(stack, settings):
    from bus import contract as c
    from order_svc import orders

    cmd = c.PlaceOrder(customer_id="orphan", items=[c.Line(sku="KB-101", qty=1)])
    # An order row with no saga row (a bug, or a hand-edited database): it would stay PENDING forever.
    await stack["orders"].db.run(lambda tx: orders.create(tx, "ord_orphan", "saga_orphan", cmd))
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    deadline_check = next(check for check in report.checks if check.number == 4)
    assert len(deadline_check.violations) == 1
    assert "ord_orphan" in deadline_check.violations[0] and "without a saga" in deadline_check.violations[0]


async def test_the_audit_flags_stock_that_changed_without_a_restock(stack, settings):
    # Units that appear (or vanish) without a restock event: on_hand moved by something else.
    more = "UPDATE products SET on_hand = on_hand + 5 WHERE sku = 'KB-101'"
    await stack["inventory"].db.run(lambda tx: tx.execute(more))
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    stock_check = next(check for check in report.checks if check.number == 1)
    assert [v for v in stock_check.violations if v.startswith("KB-101")] == [
        "KB-101: on_hand 105, but 100 restocked less 0 shipped and not put back is 100"
    ]
    assert all(check.violations == [] for check in report.checks if check.number != 1)


async def test_the_audit_flags_a_confirmed_order_whose_total_is_not_its_lines(stack, settings):
    order = await place(stack, "audit-total")
    assert order["status"] == "CONFIRMED"
    # Charged and recorded alike, but not what the lines at their unit prices come to.
    oid = (order["order_id"],)
    await stack["orders"].db.run(
        lambda tx: tx.execute("UPDATE orders SET total_cents = total_cents + 1 WHERE order_id = ?", oid)
    )
    await stack["payment"].db.run(
        lambda tx: tx.execute("UPDATE payments SET amount_cents = amount_cents + 1 WHERE order_id = ?", oid)
    )
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    exact = next(check for check in report.checks if check.number == 2)
    assert len(exact.violations) == 1 and "lines at their unit prices" in exact.violations[0]


async def test_an_order_whose_total_would_pass_the_money_limit_is_refused_by_its_reservation_before_any_charge(
    stack, settings
):
    from bus.money import MONEY_LIMIT_CENTS

    client = stack["client"]
    # Each price is within the limit (a restock takes it); two units of one are not.
    await client.call(
        s.INVENTORY_RESTOCK, {"sku": "GOLD-1", "qty": 10, "name": "Gold bar", "price_cents": MONEY_LIMIT_CENTS // 2 + 1}
    )
    await client.call(s.INVENTORY_RESTOCK, {"sku": "GOLD-2", "qty": 10, "name": "Half bar", "price_cents": 5 * 10**11})
    order = await place(stack, items=(("GOLD-1", 2),))
    assert (order["status"], order["failure_reason"], order["total_cents"]) == ("FAILED", "VALIDATION_ERROR", None)
    saga = (await client.call(s.ORDERS_GET, {"order_id": order["order_id"]}))["saga"]
    steps = [(r["step"], r["action"], r["status"]) for r in saga["steps"]]
    assert steps == [("reserve_stock", "invoke", "FAILED")]  # nothing held, so nothing to undo; payment never asked
    assert "money limit" in saga["steps"][0]["last_error"]["message"]
    assert (await stock_of(stack, "GOLD-1"))["reserved"] == 0
    with pytest.raises(NotFound):
        await client.call(s.PAYMENT_GET, {"order_id": order["order_id"]})
    timeline = (await client.call(s.ORDERS_EVENTS, {"order_id": order["order_id"]}))["events"]
    [rejected] = [e for e in timeline if e["type"] == "reservation_rejected"]
    assert rejected["data"]["reason"] == "total_over_limit"
    assert rejected["data"]["total_cents"] == 2 * (MONEY_LIMIT_CENTS // 2 + 1)
    # A total of exactly the limit is reserved and goes to payment (which declines it by its own, lower limit).
    at_limit = await place(stack, items=(("GOLD-2", 2),))
    assert (at_limit["failure_reason"], at_limit["total_cents"]) == ("PAYMENT_DECLINED", MONEY_LIMIT_CENTS)
    await assert_audit_clean(stack, settings)


async def test_a_restock_price_above_the_money_limit_is_refused_naming_the_field(stack):
    from bus.money import MONEY_LIMIT_CENTS

    body = {"sku": "GOLD-3", "qty": 1, "name": "Too dear", "price_cents": MONEY_LIMIT_CENTS + 1}
    with pytest.raises(InvalidRequest) as refused:
        await stack["client"].call(s.INVENTORY_RESTOCK, body)
    assert [e["field"] for e in refused.value.details["errors"]] == ["price_cents"]
    with pytest.raises(NotFound):
        await stack["client"].call(s.INVENTORY_STOCK, {"sku": "GOLD-3"})
    product = await stack["client"].call(s.INVENTORY_RESTOCK, body | {"price_cents": MONEY_LIMIT_CENTS})
    assert product["price_cents"] == MONEY_LIMIT_CENTS


def test_the_payment_decline_limit_cannot_be_set_above_the_money_limit(monkeypatch):
    from pydantic import ValidationError

    from bus.money import MONEY_LIMIT_CENTS
    from bus.settings import Settings

    monkeypatch.setenv("OMS_PAYMENT_LIMIT_CENTS", str(MONEY_LIMIT_CENTS + 1))
    with pytest.raises(ValidationError, match="payment_limit_cents"):
        Settings()
