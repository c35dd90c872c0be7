"""The inventory service over real NATS: reservations, releases, restocks, idempotency, hostile input."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bus import contract as c
from bus import subjects as s
from bus.app import running
from bus.client import Client
from bus.errors import Conflict, InvalidRequest, NotFound
from bus.settings import Settings
from inventory_svc.catalog import CATALOG
from inventory_svc.service import SPEC
from tests.conftest import ask, stream_events

PRICE = {item.sku: item.price_cents for item in CATALOG}
ON_HAND = {item.sku: item.on_hand for item in CATALOG}


@pytest.fixture
async def inventory(settings: Settings):
    async with running(SPEC, settings, serve_metrics=False) as kernel:
        yield kernel


async def order_events(nc, settings: Settings) -> list[tuple[str, str]]:
    """(type, key) of every event after the catalog seed."""
    return [(e["type"], e["subject"].split(".")[-1]) for e in (await stream_events(nc, settings))[len(CATALOG) :]]


async def levels(client: Client) -> dict[str, tuple[int, int]]:
    stock = await client.call(s.INVENTORY_STOCK, {}, c.Stock)
    return {p.sku: (p.on_hand, p.reserved) for p in stock.products}


def reserve_body(order_id: str, **qty: int) -> dict:
    return {"order_id": order_id, "items": [{"sku": sku.replace("_", "-"), "qty": n} for sku, n in qty.items()]}


def gauge(kernel, name: str, sku: str) -> float | None:
    return kernel.metrics.registry.get_sample_value(name, {"sku": sku})


async def test_first_start_seeds_the_catalog_once_with_one_restock_event_per_sku(client, nc, settings):
    async with running(SPEC, settings, serve_metrics=False) as inventory:
        stock = await client.call(s.INVENTORY_STOCK, {}, c.Stock)
        assert [p.sku for p in stock.products] == sorted(item.sku for item in CATALOG)
        assert all(p.on_hand == ON_HAND[p.sku] and p.reserved == 0 and p.available == p.on_hand for p in stock.products)
        events = await stream_events(nc, settings)
        assert [e["subject"] for e in events] == [f"events.inventory.stock_restocked.{i.sku}" for i in CATALOG]
        assert events[0]["data"].pop("restocked_at")
        assert events[0]["data"] == {
            "sku": "KB-101",
            "name": "Mechanical keyboard",
            "price_cents": 8900,
            "qty": 100,
            "on_hand": 100,
            "reserved": 0,
            "restocked_units": 100,
        }
        assert gauge(inventory, "oms_stock_on_hand_units", "LAMP-1") == 3
    async with running(SPEC, settings, serve_metrics=False):  # started again on the same file
        pass
    assert len(await stream_events(nc, settings)) == len(CATALOG)


async def test_reserve_then_release_moves_stock_and_back(inventory, client, nc, settings):
    reservation = await client.call(s.INVENTORY_RESERVE, reserve_body("o-1", KB_101=2, MS_202=1), c.Reservation)
    assert reservation.status == "ACTIVE" and reservation.currency == settings.currency
    assert [(i.sku, i.qty, i.unit_price_cents) for i in reservation.items] == [("KB-101", 2, 8900), ("MS-202", 1, 2900)]
    assert reservation.total_cents == 2 * 8900 + 2900
    after = await levels(client)
    assert after["KB-101"] == (100, 2) and after["MS-202"] == (100, 1)
    assert gauge(inventory, "oms_stock_reserved_units", "KB-101") == 2

    released = await client.call(s.INVENTORY_RELEASE, {"order_id": "o-1"}, c.Released)
    assert released == c.Released(order_id="o-1", tombstone=False)
    assert (await levels(client))["KB-101"] == (100, 0)
    assert gauge(inventory, "oms_stock_reserved_units", "KB-101") == 0
    again = await client.call(s.INVENTORY_RELEASE, {"order_id": "o-1"}, c.Released)
    assert again == released
    assert await order_events(nc, settings) == [("stock_reserved", "o-1"), ("stock_released", "o-1")]
    audit = await client.call(s.INVENTORY_RESERVATIONS, {"order_id": "o-1"}, c.ReservationList)
    assert [(r.status, r.released_at is not None) for r in audit.reservations] == [("RELEASED", True)]


async def test_a_short_line_reserves_nothing_and_records_the_rejection(inventory, client, nc, settings):
    before = await levels(client)
    body, headers = await ask(nc, "inventory.reserve", reserve_body("o-2", KB_101=1, LAMP_1=5))
    assert body["error"]["code"] == "OUT_OF_STOCK" and body["error"]["retryable"] is False
    assert body["error"]["details"] == {"lines": [{"sku": "LAMP-1", "requested": 5, "available": 3}]}
    assert headers["Nats-Service-Error-Code"] == "422" and "LAMP-1" in headers["Nats-Service-Error"]
    assert await levels(client) == before
    audit = await client.call(s.INVENTORY_RESERVATIONS, {"order_id": "o-2"}, c.ReservationList)
    assert audit.reservations == []
    events = await stream_events(nc, settings)
    assert events[-1]["type"] == "reservation_rejected" and events[-1]["order_id"] == "o-2"
    assert events[-1]["data"]["lines"] == [{"sku": "LAMP-1", "requested": 5, "available": 3}]
    # the order is free to try again with what fits
    fits = await client.call(s.INVENTORY_RESERVE, reserve_body("o-2", LAMP_1=3), c.Reservation)
    assert fits.total_cents == 3 * 4500
    assert (await levels(client))["LAMP-1"] == (3, 3)
    assert await order_events(nc, settings) == [("reservation_rejected", "o-2"), ("stock_reserved", "o-2")]


async def test_an_unknown_sku_is_not_found_everywhere(inventory, client, nc, settings):
    body, headers = await ask(nc, "inventory.reserve", reserve_body("o-3", KB_101=1, NOPE_9=1))
    assert body["error"]["code"] == "NOT_FOUND" and body["error"]["details"] == {"sku": "NOPE-9"}
    assert headers["Nats-Service-Error-Code"] == "404"
    with pytest.raises(NotFound, match="NOPE-9"):
        await client.call(s.INVENTORY_CHECK, {"items": [{"sku": "NOPE-9", "qty": 1}]})
    with pytest.raises(NotFound):
        await client.call(s.INVENTORY_STOCK, {"sku": "NOPE-9"})
    assert (await levels(client))["KB-101"] == (100, 0)
    assert await order_events(nc, settings) == []


async def test_check_reports_each_line_and_changes_nothing(inventory, client, nc, settings):
    answer = await client.call(
        s.INVENTORY_CHECK, {"items": [{"sku": "KB-101", "qty": 5}, {"sku": "LAMP-1", "qty": 5}]}, c.Availability
    )
    assert answer.available is False
    assert [(x.sku, x.requested, x.available) for x in answer.lines] == [("KB-101", 5, 100), ("LAMP-1", 5, 3)]
    fits = await client.call(s.INVENTORY_CHECK, {"items": [{"sku": "LAMP-1", "qty": 3}]}, c.Availability)
    assert fits.available is True
    one = await client.call(s.INVENTORY_STOCK, {"sku": "MN-303"}, c.Stock)
    assert one.products == [
        c.Product(
            sku="MN-303",
            name="27in monitor",
            price_cents=32900,
            on_hand=50,
            reserved=0,
            available=50,
            restocked_units=50,
        )
    ]
    assert await order_events(nc, settings) == []


async def test_two_hundred_concurrent_reserves_for_ten_units_sell_exactly_ten(inventory, client, nc, settings):
    await client.call(s.INVENTORY_RESTOCK, {"sku": "RARE-1", "qty": 10, "name": "Rare widget", "price_cents": 999})
    replies = await asyncio.gather(
        *(
            ask(nc, "inventory.reserve", {"order_id": f"c-{i}", "items": [{"sku": "RARE-1", "qty": 1}]})
            for i in range(200)
        )
    )
    outcomes = Counter("OK" if body["ok"] else body["error"]["code"] for body, _ in replies)
    assert outcomes == {"OK": 10, "OUT_OF_STOCK": 190}
    product = (await client.call(s.INVENTORY_STOCK, {"sku": "RARE-1"}, c.Stock)).products[0]
    assert (product.on_hand, product.reserved, product.available) == (10, 10, 0)
    active = await client.call(s.INVENTORY_RESERVATIONS, {"status": "ACTIVE"}, c.ReservationList)
    assert len(active.reservations) == 10
    assert gauge(inventory, "oms_stock_reserved_units", "RARE-1") == 10
    kinds = Counter(kind for kind, _ in await order_events(nc, settings))
    assert kinds == {"stock_restocked": 1, "stock_reserved": 10, "reservation_rejected": 190}


async def test_a_release_for_an_unknown_order_tombstones_it_and_refuses_a_late_reserve(inventory, client, nc, settings):
    released = await client.call(s.INVENTORY_RELEASE, {"order_id": "o-4", "reason": "saga timed out"}, c.Released)
    assert released.tombstone is True
    body, headers = await ask(nc, "inventory.reserve", reserve_body("o-4", KB_101=1))
    assert body["error"]["code"] == "CONFLICT" and "late reserve is refused" in body["error"]["message"]
    assert headers["Nats-Service-Error-Code"] == "409"
    assert (await client.call(s.INVENTORY_RELEASE, {"order_id": "o-4"}, c.Released)).tombstone is True
    assert (await levels(client))["KB-101"] == (100, 0)
    events = await stream_events(nc, settings)
    assert [e["type"] for e in events[len(CATALOG) :]] == ["stock_released"]
    assert events[-1]["data"]["tombstone"] is True and events[-1]["data"]["reason"] == "saga timed out"


async def test_reserve_is_idempotent_by_order_id_and_refuses_different_items(inventory, client, nc, settings):
    first = await client.call(s.INVENTORY_RESERVE, reserve_body("o-5", KB_101=1, MS_202=2), c.Reservation)
    same = await client.call(s.INVENTORY_RESERVE, reserve_body("o-5", MS_202=2, KB_101=1), c.Reservation)
    assert same == first
    with pytest.raises(Conflict, match="different items"):
        await client.call(s.INVENTORY_RESERVE, reserve_body("o-5", KB_101=2, MS_202=2))
    assert (await levels(client))["MS-202"] == (100, 2)
    assert await order_events(nc, settings) == [("stock_reserved", "o-5")]


async def test_a_new_sku_needs_a_name_and_a_price(inventory, client, nc, settings):
    body, _ = await ask(nc, "inventory.restock", {"sku": "NEW-1", "qty": 5, "price_cents": 100})
    assert body["error"]["code"] == "VALIDATION_ERROR" and body["error"]["details"] == {"field": "name"}
    with pytest.raises(InvalidRequest) as missing_price:
        await client.call(s.INVENTORY_RESTOCK, {"sku": "NEW-1", "qty": 5, "name": "Gadget"})
    assert missing_price.value.details == {"field": "price_cents"}
    created = await client.call(
        s.INVENTORY_RESTOCK, {"sku": "NEW-1", "qty": 5, "name": "Gadget", "price_cents": 100}, c.Product
    )
    assert (created.on_hand, created.reserved, created.available, created.price_cents) == (5, 0, 5, 100)
    topped = await client.call(s.INVENTORY_RESTOCK, {"sku": "NEW-1", "qty": 2, "price_cents": 150}, c.Product)
    assert (topped.name, topped.on_hand, topped.price_cents) == ("Gadget", 7, 150)
    assert gauge(inventory, "oms_stock_on_hand_units", "NEW-1") == 7
    events = (await stream_events(nc, settings))[len(CATALOG) :]
    assert all(e["data"].pop("restocked_at") for e in events)
    assert [e["data"] for e in events] == [
        {
            "sku": "NEW-1",
            "name": "Gadget",
            "price_cents": 100,
            "qty": 5,
            "on_hand": 5,
            "reserved": 0,
            "restocked_units": 5,
        },
        {
            "sku": "NEW-1",
            "name": "Gadget",
            "price_cents": 150,
            "qty": 2,
            "on_hand": 7,
            "reserved": 0,
            "restocked_units": 7,
        },
    ]
    assert all(e["subject"] == "events.inventory.stock_restocked.NEW-1" for e in events)


MUTATIONS = [
    pytest.param("inventory.reserve", reserve_body("k-1", KB_101=1), reserve_body("k-1", KB_101=2), "OK", id="reserve"),
    pytest.param(
        "inventory.reserve",
        reserve_body("k-2", LAMP_1=9),
        reserve_body("k-2", LAMP_1=8),
        "OUT_OF_STOCK",
        id="reserve-out-of-stock",
    ),
    pytest.param("inventory.release", {"order_id": "k-3"}, {"order_id": "k-4"}, "OK", id="release"),
    pytest.param("inventory.restock", {"sku": "KB-101", "qty": 1}, {"sku": "KB-101", "qty": 2}, "OK", id="restock"),
    pytest.param(
        "inventory.restock",
        {"sku": "NEW-2", "qty": 1},
        {"sku": "NEW-2", "qty": 1, "name": "x"},
        "VALIDATION_ERROR",
        id="restock-invalid",
    ),
]


@pytest.mark.parametrize(("subject", "body", "other", "outcome"), MUTATIONS)
async def test_a_repeated_idempotency_key_replays_the_reply_and_changes_nothing(
    inventory, client, nc, settings, subject, body, other, outcome
):
    first, _ = await ask(nc, subject, body, key="key-1")
    assert ("OK" if first["ok"] else first["error"]["code"]) == outcome
    before, stock = await stream_events(nc, settings), await levels(client)
    repeats = await asyncio.gather(*(ask(nc, subject, body, key="key-1") for _ in range(5)))
    assert all(reply == first for reply, _ in repeats)
    assert await stream_events(nc, settings) == before and await levels(client) == stock
    conflict, headers = await ask(nc, subject, other, key="key-1")
    assert conflict["error"]["code"] == "CONFLICT" and conflict["error"]["details"]["field"] == "Idempotency-Key"
    assert headers["Nats-Service-Error-Code"] == "409"
    assert await stream_events(nc, settings) == before and await levels(client) == stock


def _lines(n: int) -> list[dict]:
    return [{"sku": f"S-{i}", "qty": 1} for i in range(n)]


HOSTILE = [
    ("inventory.reserve", b"{not json"),
    ("inventory.reserve", b"[]"),
    ("inventory.reserve", b"null"),
    ("inventory.reserve", b'"text"'),
    ("inventory.reserve", b"[" * 100_000),
    ("inventory.reserve", b"\xff\xfe"),
    ("inventory.reserve", {"items": [{"sku": "KB-101", "qty": 1}]}),
    ("inventory.reserve", reserve_body("v", KB_101="1")),
    ("inventory.reserve", reserve_body("v", KB_101=1.5)),
    ("inventory.reserve", reserve_body("v", KB_101=True)),
    ("inventory.reserve", reserve_body("v", KB_101=0)),
    ("inventory.reserve", reserve_body("v", KB_101=-1)),
    ("inventory.reserve", reserve_body("v", KB_101=1001)),
    ("inventory.reserve", {"order_id": "v", "items": []}),
    ("inventory.reserve", {"order_id": "v", "items": [{"sku": "kb-101", "qty": 1}]}),
    ("inventory.reserve", {"order_id": "v", "items": [{"sku": "KB-101", "qty": 1}] * 2}),
    ("inventory.reserve", {"order_id": "v w", "items": [{"sku": "KB-101", "qty": 1}]}),
    ("inventory.reserve", {"order_id": 7, "items": [{"sku": "KB-101", "qty": 1}]}),
    ("inventory.reserve", reserve_body("v", KB_101=1) | {"extra": 1}),
    ("inventory.reserve", {"order_id": "v", "items": _lines(51)}),
    ("inventory.reserve", {"order_id": "v", "items": _lines(10_000)}),
    ("inventory.reserve", b'{"order_id":"' + b"x" * 900_000 + b'"}'),
    ("inventory.release", {"order_id": ""}),
    ("inventory.release", {"order_id": "v", "reason": "r" * 201}),
    ("inventory.restock", {"sku": "KB-101", "qty": 0}),
    ("inventory.restock", {"sku": "KB-101", "qty": -5}),
    ("inventory.restock", {"sku": "NEW-3", "qty": 1, "name": "", "price_cents": 1}),
    ("inventory.restock", {"sku": "NEW-3", "qty": 1, "name": "n", "price_cents": -1}),
    ("inventory.check", {"items": []}),
    ("inventory.stock", {"sku": 5}),
    ("inventory.reservations", {"limit": 0}),
    ("inventory.reservations", {"limit": 1001}),
    ("inventory.reservations", {"status": "GONE"}),
]


async def test_hostile_payloads_answer_validation_error_and_change_nothing(inventory, client, nc, settings):
    before, stock = await stream_events(nc, settings), await levels(client)
    for subject, payload in HOSTILE:
        body, headers = await ask(nc, subject, payload)
        assert body["ok"] is False and body["error"]["code"] == "VALIDATION_ERROR", (subject, payload, body)
        assert headers["Nats-Service-Error-Code"] == "400" and headers["Nats-Service-Error"]
    bad_key, _ = await ask(nc, "inventory.release", {"order_id": "v"}, key="has spaces")
    assert bad_key["error"]["code"] == "VALIDATION_ERROR" and bad_key["error"]["details"] == {
        "field": "Idempotency-Key"
    }
    assert await stream_events(nc, settings) == before and await levels(client) == stock
    assert (await client.call(s.INVENTORY_RESERVATIONS, {}, c.ReservationList)).reservations == []


async def test_every_state_change_has_exactly_its_event_with_the_full_row(inventory, client, nc, settings):
    reservation = await client.call(s.INVENTORY_RESERVE, reserve_body("e-1", HD_404=2), c.Reservation)
    await client.call(s.INVENTORY_RELEASE, {"order_id": "e-1"})
    await client.call(s.INVENTORY_RELEASE, {"order_id": "e-2"})
    await ask(nc, "inventory.reserve", reserve_body("e-3", LAMP_1=4))
    await client.call(s.INVENTORY_RESTOCK, {"sku": "LAMP-1", "qty": 1})
    await client.call(s.INVENTORY_RESERVE, reserve_body("e-3", LAMP_1=4))
    events = (await stream_events(nc, settings))[len(CATALOG) :]
    assert [e["subject"] for e in events] == [
        "events.inventory.stock_reserved.e-1",
        "events.inventory.stock_released.e-1",
        "events.inventory.stock_released.e-2",
        "events.inventory.reservation_rejected.e-3",
        "events.inventory.stock_restocked.LAMP-1",
        "events.inventory.stock_reserved.e-3",
    ]
    assert all(e["service"] == "inventory" and e["event_id"].startswith("evt_") for e in events)
    assert [e["order_id"] for e in events] == ["e-1", "e-1", "e-2", "e-3", None, "e-3"]
    reserved, released = events[0]["data"], events[1]["data"]
    assert c.Reservation.model_validate(reserved) == reservation
    assert released["items"] == reserved["items"] and released["status"] == "RELEASED" and released["released_at"]
    assert (await levels(client))["LAMP-1"] == (4, 4)


async def test_the_reservations_audit_filters_and_pages_by_order_id(inventory, client):
    for order_id in ("r-3", "r-1", "r-2"):
        await client.call(s.INVENTORY_RESERVE, reserve_body(order_id, CB_505=1))
    await client.call(s.INVENTORY_RELEASE, {"order_id": "r-2"})
    await client.call(s.INVENTORY_RELEASE, {"order_id": "r-0"})  # a tombstone
    page = await client.call(s.INVENTORY_RESERVATIONS, {"limit": 2}, c.ReservationList)
    assert [(r.order_id, r.status, len(r.items)) for r in page.reservations] == [
        ("r-0", "RELEASED", 0),
        ("r-1", "ACTIVE", 1),
    ]
    rest = await client.call(s.INVENTORY_RESERVATIONS, {"limit": 2, "after": "r-1"}, c.ReservationList)
    assert [r.order_id for r in rest.reservations] == ["r-2", "r-3"]
    active = await client.call(s.INVENTORY_RESERVATIONS, {"status": "ACTIVE"}, c.ReservationList)
    assert [r.order_id for r in active.reservations] == ["r-1", "r-3"]
    one = await client.call(s.INVENTORY_RESERVATIONS, {"order_id": "r-2"}, c.ReservationList)
    assert [(r.status, r.total_cents) for r in one.reservations] == [("RELEASED", 1200)]
