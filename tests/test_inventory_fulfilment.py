"""The inventory service's fulfilment over real NATS: commit and uncommit, returns, resellable products."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bus import contract as c
from bus import subjects as s
from bus.app import running
from bus.errors import Conflict, InvalidRequest, NotFound
from bus.settings import Settings
from inventory_svc.service import SPEC
from tests.conftest import ask, stream_events
from tests.test_inventory import levels, order_events, reserve_body


@pytest.fixture
async def inventory(settings: Settings):
    async with running(SPEC, settings, serve_metrics=False) as kernel:
        yield kernel


def commit_body(order_id: str, commit_id: str = "com-1", **more: object) -> dict:
    return {"order_id": order_id, "commit_id": commit_id, **more}


def return_body(order_id: str, return_id: str, **qty: int) -> dict:
    return {"order_id": order_id, "return_id": return_id, **reserve_body(order_id, **qty)}


async def shipped(client, order_id: str, **qty: int) -> c.Reservation:
    await client.call(s.INVENTORY_RESERVE, reserve_body(order_id, **qty))
    return await client.call(s.INVENTORY_COMMIT, commit_body(order_id), c.Reservation)


# -- commit and uncommit ------------------------------------------------------------


async def test_a_commit_takes_the_units_off_hand_and_out_of_reserved_once(inventory, client, nc, settings):
    await client.call(s.INVENTORY_RESERVE, reserve_body("o-1", KB_101=2, MS_202=1))
    assert (await levels(client))["KB-101"] == (100, 2)
    committed = await client.call(s.INVENTORY_COMMIT, commit_body("o-1"), c.Reservation)
    assert (committed.status, committed.commit_id) == ("COMMITTED", "com-1") and committed.committed_at
    assert [(i.sku, i.qty, i.returned_qty) for i in committed.items] == [("KB-101", 2, 0), ("MS-202", 1, 0)]
    after = await levels(client)
    assert after["KB-101"] == (98, 0) and after["MS-202"] == (99, 0)
    assert await client.call(s.INVENTORY_COMMIT, commit_body("o-1"), c.Reservation) == committed
    assert (await levels(client))["KB-101"] == (98, 0)
    assert inventory.metrics.registry.get_sample_value("oms_stock_on_hand_units", {"sku": "KB-101"}) == 98
    listed = await client.call(s.INVENTORY_RESERVATIONS, {"status": "COMMITTED"}, c.ReservationList)
    assert listed.reservations == [committed]
    events = (await stream_events(nc, settings))[-1]
    assert events["subject"] == "events.inventory.stock_committed.o-1"
    assert c.Reservation.model_validate(events["data"]) == committed


async def test_a_commit_is_refused_unless_the_reservation_is_active_and_this_commit_ids(
    inventory, client, nc, settings
):
    with pytest.raises(NotFound, match="no reservation for order o-2"):
        await client.call(s.INVENTORY_COMMIT, commit_body("o-2"))
    await shipped(client, "o-3", CB_505=1)
    with pytest.raises(Conflict, match="committed by com-1") as other:
        await client.call(s.INVENTORY_COMMIT, commit_body("o-3", "com-2"))
    assert other.value.details == {"order_id": "o-3", "commit_id": "com-2", "status": "COMMITTED"}
    await client.call(s.INVENTORY_RESERVE, reserve_body("o-4", CB_505=1))
    await client.call(s.INVENTORY_RELEASE, {"order_id": "o-4"})
    with pytest.raises(Conflict, match="is released"):
        await client.call(s.INVENTORY_COMMIT, commit_body("o-4"))
    # and a committed reservation is not released: its units left with the order
    body, headers = await ask(nc, "inventory.release", {"order_id": "o-3"})
    assert body["error"]["code"] == "CONFLICT" and "committed (shipped)" in body["error"]["message"]
    assert headers["Nats-Service-Error-Code"] == "409"
    assert (await levels(client))["CB-505"] == (499, 0)


async def test_an_uncommit_puts_the_units_back_and_refuses_the_commit_id_later(inventory, client, nc, settings):
    await shipped(client, "u-1", HD_404=3)
    assert (await levels(client))["HD-404"] == (57, 0)
    undone = await client.call(s.INVENTORY_UNCOMMIT, commit_body("u-1", reason="ship failed"), c.Uncommitted)
    assert (undone.order_id, undone.commit_id, undone.tombstone) == ("u-1", "com-1", False)
    assert undone.reservation is not None and undone.reservation.status == "ACTIVE"
    assert undone.reservation.commit_id is None and undone.reservation.committed_at is None
    assert (await levels(client))["HD-404"] == (60, 3)
    assert await client.call(s.INVENTORY_UNCOMMIT, commit_body("u-1"), c.Uncommitted) == undone
    with pytest.raises(Conflict, match="com-1 of order u-1 was reversed; a late commit is refused"):
        await client.call(s.INVENTORY_COMMIT, commit_body("u-1"))
    again = await client.call(s.INVENTORY_COMMIT, commit_body("u-1", "com-2"), c.Reservation)
    assert again.commit_id == "com-2" and (await levels(client))["HD-404"] == (57, 0)
    events = await order_events(nc, settings)
    assert events == [
        ("stock_reserved", "u-1"),
        ("stock_committed", "u-1"),
        ("stock_uncommitted", "u-1"),
        ("stock_committed", "u-1"),
    ]


async def test_an_uncommit_that_overtakes_its_commit_leaves_a_tombstone(inventory, client, nc, settings):
    await client.call(s.INVENTORY_RESERVE, reserve_body("u-2", DK_606=1))
    early = await client.call(s.INVENTORY_UNCOMMIT, commit_body("u-2"), c.Uncommitted)
    assert early.tombstone is True and early.reservation is not None and early.reservation.status == "ACTIVE"
    body, _ = await ask(nc, "inventory.commit", commit_body("u-2"))
    assert body["error"]["code"] == "CONFLICT" and "late commit is refused" in body["error"]["message"]
    assert (await levels(client))["DK-606"] == (40, 1)
    unknown = await client.call(s.INVENTORY_UNCOMMIT, commit_body("u-3"), c.Uncommitted)
    assert (unknown.tombstone, unknown.reservation) == (True, None)
    events = (await stream_events(nc, settings))[-2:]
    assert [(e["type"], e["data"]["tombstone"]) for e in events] == [
        ("stock_uncommitted", True),
        ("stock_uncommitted", True),
    ]


async def test_a_commit_with_returns_is_not_uncommitted(inventory, client):
    await shipped(client, "u-4", WC_707=2)
    await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("u-4", "ret-1", WC_707=1))
    with pytest.raises(Conflict, match="units returned already") as refused:
        await client.call(s.INVENTORY_UNCOMMIT, commit_body("u-4"))
    assert refused.value.details["returned"] == {"WC-707": 1}


async def test_commits_and_uncommits_racing_never_count_a_unit_twice(inventory, client, nc, settings):
    for i in range(10):
        await client.call(s.INVENTORY_RESERVE, reserve_body(f"x-{i}", MN_303=1))
    replies = await asyncio.gather(
        *(ask(nc, subject, commit_body(f"x-{i}")) for i in range(10) for subject in ("inventory.commit",) * 3),
        *(ask(nc, "inventory.uncommit", commit_body(f"x-{i}")) for i in range(0, 10, 2)),
    )
    assert all(body["ok"] or body["error"]["code"] == "CONFLICT" for body, _ in replies)
    listed = await client.call(s.INVENTORY_RESERVATIONS, {}, c.ReservationList)
    committed = sum(r.status == "COMMITTED" for r in listed.reservations)
    active = sum(r.status == "ACTIVE" for r in listed.reservations)
    assert committed + active == 10 and committed >= 5
    assert (await levels(client))["MN-303"] == (50 - committed, active)


# -- returns ------------------------------------------------------------------------


async def test_resellable_returns_go_back_on_hand_and_others_do_not(inventory, client, nc, settings):
    flagged = await client.call(s.INVENTORY_PRODUCT, {"sku": "HD-404", "resellable": False}, c.Product)
    assert (flagged.resellable, flagged.on_hand, flagged.name) == (False, 60, "Noise-cancelling headphones")
    await shipped(client, "r-1", KB_101=3, HD_404=2)
    assert (await levels(client))["KB-101"] == (97, 0)
    receipt = await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("r-1", "ret-1", KB_101=2, HD_404=1))
    assert receipt["items"] == [
        {"sku": "KB-101", "qty": 2, "restocked": True},
        {"sku": "HD-404", "qty": 1, "restocked": False},
    ]
    after = await levels(client)
    assert after["KB-101"] == (99, 0) and after["HD-404"] == (58, 0)
    assert await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("r-1", "ret-1", KB_101=2, HD_404=1)) == receipt
    assert (await levels(client))["KB-101"] == (99, 0)
    held = (await client.call(s.INVENTORY_RESERVATIONS, {"order_id": "r-1"}, c.ReservationList)).reservations[0]
    assert [(i.sku, i.qty, i.returned_qty) for i in held.items] == [("KB-101", 3, 2), ("HD-404", 2, 1)]
    event = (await stream_events(nc, settings))[-1]
    assert event["subject"] == "events.inventory.stock_returned.r-1"
    assert c.ReturnReceipt.model_validate(event["data"]) == c.ReturnReceipt.model_validate(receipt)


async def test_a_return_never_exceeds_what_was_committed(inventory, client, nc, settings):
    await shipped(client, "r-2", MS_202=3, CB_505=1)
    await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("r-2", "ret-1", MS_202=2))
    before, stock = await stream_events(nc, settings), await levels(client)
    with pytest.raises(Conflict, match="returning 2 of MS-202, but only 1 of it is left to return") as over:
        await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("r-2", "ret-2", MS_202=2, CB_505=1))
    assert over.value.details["lines"] == [{"sku": "MS-202", "requested": 2, "left": 1}]
    with pytest.raises(Conflict, match="ret-1 was received already"):
        await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("r-2", "ret-1", MS_202=1))
    assert await stream_events(nc, settings) == before and await levels(client) == stock  # all lines or none


async def test_returns_racing_for_the_same_lines_never_exceed_what_was_committed(inventory, client, nc, settings):
    await shipped(client, "r-3", LAMP_1=3)
    replies = await asyncio.gather(
        *(ask(nc, "inventory.receive_return", return_body("r-3", f"ret-{i}", LAMP_1=1 + i % 2)) for i in range(12))
    )
    outcomes = Counter("OK" if body["ok"] else body["error"]["code"] for body, _ in replies)
    assert set(outcomes) <= {"OK", "CONFLICT"} and outcomes["OK"] >= 2
    taken = sum(body["result"]["items"][0]["qty"] for body, _ in replies if body["ok"])
    held = (await client.call(s.INVENTORY_RESERVATIONS, {"order_id": "r-3"}, c.ReservationList)).reservations[0]
    assert taken == held.items[0].returned_qty == 3  # each race ends with every unit back, none twice
    assert (await levels(client))["LAMP-1"] == (3, 0)
    assert sum(kind == "stock_returned" for kind, _ in await order_events(nc, settings)) == outcomes["OK"]


async def test_a_return_is_refused_for_what_the_order_does_not_hold(inventory, client, nc, settings):
    with pytest.raises(NotFound):
        await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("r-4", "ret-1", KB_101=1))
    await client.call(s.INVENTORY_RESERVE, reserve_body("r-5", KB_101=1))
    with pytest.raises(Conflict, match="is active: only shipped units are returned"):
        await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("r-5", "ret-1", KB_101=1))
    await client.call(s.INVENTORY_COMMIT, commit_body("r-5"))
    before, stock = await stream_events(nc, settings), await levels(client)
    with pytest.raises(InvalidRequest, match=r"items\[1\]\.sku: order r-5 has no line of MS-202") as foreign:
        await client.call(s.INVENTORY_RECEIVE_RETURN, return_body("r-5", "ret-1", KB_101=1, MS_202=1))
    assert foreign.value.details["field"] == "items[1].sku"
    assert await stream_events(nc, settings) == before and await levels(client) == stock


# -- products -----------------------------------------------------------------------


async def test_restock_and_product_updates_set_the_resellable_flag(inventory, client, nc, settings):
    new = await client.call(
        s.INVENTORY_RESTOCK,
        {"sku": "OPEN-1", "qty": 4, "name": "Opened box", "price_cents": 500, "resellable": False},
        c.Product,
    )
    assert (new.resellable, new.on_hand) == (False, 4)
    topped = await client.call(s.INVENTORY_RESTOCK, {"sku": "OPEN-1", "qty": 1}, c.Product)
    assert (topped.resellable, topped.on_hand) == (False, 5)
    renamed = await client.call(
        s.INVENTORY_PRODUCT, {"sku": "OPEN-1", "name": "Open box", "resellable": True}, c.Product
    )
    assert (renamed.name, renamed.resellable, renamed.on_hand, renamed.price_cents) == ("Open box", True, 5, 500)
    with pytest.raises(NotFound):
        await client.call(s.INVENTORY_PRODUCT, {"sku": "NOPE-1", "resellable": True})
    events = (await stream_events(nc, settings))[-3:]
    assert [e["type"] for e in events] == ["stock_restocked", "stock_restocked", "product_updated"]
    assert events[0]["data"]["resellable"] is False and "resellable" not in events[1]["data"]


MUTATIONS = [
    pytest.param("inventory.commit", commit_body("k-1"), commit_body("k-1", "com-9"), id="commit"),
    pytest.param("inventory.uncommit", commit_body("k-1"), commit_body("k-1", "com-9"), id="uncommit"),
    pytest.param(
        "inventory.receive_return",
        return_body("k-1", "ret-k", KB_101=1),
        return_body("k-1", "ret-k", KB_101=2),
        id="receive-return",
    ),
    pytest.param(
        "inventory.product", {"sku": "KB-101", "resellable": False}, {"sku": "KB-101", "resellable": True}, id="product"
    ),
]


@pytest.mark.parametrize(("subject", "body", "other"), MUTATIONS)
async def test_a_repeated_idempotency_key_replays_the_reply_and_changes_nothing(
    inventory, client, nc, settings, subject, body, other
):
    await shipped(client, "k-1", KB_101=2)
    first, _ = await ask(nc, subject, body, key="key-1")
    before, stock = await stream_events(nc, settings), await levels(client)
    repeats = await asyncio.gather(*(ask(nc, subject, body, key="key-1") for _ in range(5)))
    assert all(reply == first for reply, _ in repeats)
    conflict, _ = await ask(nc, subject, other, key="key-1")
    assert conflict["error"]["code"] == "CONFLICT" and conflict["error"]["details"]["field"] == "Idempotency-Key"
    assert await stream_events(nc, settings) == before and await levels(client) == stock


HOSTILE = [
    ("inventory.commit", {"order_id": "h"}),
    ("inventory.commit", commit_body("h", "")),
    ("inventory.commit", commit_body("h", "a b")),
    ("inventory.commit", commit_body("h", extra=True)),
    ("inventory.uncommit", commit_body("h", reason="r" * 201)),
    ("inventory.receive_return", {"order_id": "h", "return_id": "ret", "items": []}),
    ("inventory.receive_return", return_body("h", "ret", KB_101=0)),
    ("inventory.receive_return", return_body("h", "ret", KB_101=-1)),
    ("inventory.receive_return", return_body("h", "ret", KB_101="1")),
    ("inventory.receive_return", {"order_id": "h", "return_id": "ret", "items": [{"sku": "KB-101", "qty": 1}] * 2}),
    ("inventory.receive_return", {"order_id": "h", "items": [{"sku": "KB-101", "qty": 1}]}),
    ("inventory.product", {"sku": "KB-101"}),
    ("inventory.product", {"sku": "KB-101", "resellable": "no"}),
    ("inventory.product", {"sku": "KB-101", "qty": 5}),
    ("inventory.restock", {"sku": "KB-101", "qty": 1, "resellable": 0}),
    ("inventory.reservations", {"status": "SHIPPED"}),
]


async def test_hostile_payloads_answer_validation_error_and_change_nothing(inventory, client, nc, settings):
    await shipped(client, "h", KB_101=1)
    before, stock = await stream_events(nc, settings), await levels(client)
    for subject, payload in HOSTILE:
        body, headers = await ask(nc, subject, payload)
        assert body["ok"] is False and body["error"]["code"] == "VALIDATION_ERROR", (subject, payload, body)
        assert headers["Nats-Service-Error-Code"] == "400"
    body, _ = await ask(nc, "inventory.receive_return", return_body("h", "ret", KB_101=0))
    assert body["error"]["details"]["errors"][0]["field"] == "items[0].qty"
    body, _ = await ask(nc, "inventory.product", {"sku": "KB-101"})
    assert "give at least one of name, price_cents, resellable" in body["error"]["message"]
    assert await stream_events(nc, settings) == before and await levels(client) == stock


def test_every_fulfilment_route_declares_its_models_and_is_in_the_schema_and_the_fuzz_targets():
    from bus.contract import schemas
    from tests.test_fuzz import TARGETS

    routes = (
        s.PAYMENT_CAPTURE,
        s.PAYMENT_REVERSE_CAPTURE,
        s.PAYMENT_REFUND,
        s.PAYMENT_VOID,
        s.INVENTORY_COMMIT,
        s.INVENTORY_UNCOMMIT,
        s.INVENTORY_RECEIVE_RETURN,
        s.INVENTORY_PRODUCT,
    )
    exported, fuzzed = schemas(), {t.subject for t in TARGETS}
    for route in routes:
        assert route.mutating and route.reply is not None and route in s.ROUTES, route.subject
        assert {route.request.__name__, route.reply.__name__} <= exported.keys(), route.subject
        assert route.subject in fuzzed, route.subject
