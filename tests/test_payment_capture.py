"""The payment service's fulfilment over real NATS: capture and its reversal, refunds of an amount, void."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bus import contract as c
from bus import subjects as s
from bus.app import running
from bus.errors import Conflict, NotFound, RequestTimeout
from bus.settings import Settings
from payment_svc.service import SPEC
from tests.conftest import ask, stream_events
from tests.test_payment import auth


@pytest.fixture
async def payment(settings: Settings):
    async with running(SPEC, settings, serve_metrics=False) as kernel:
        yield kernel


async def kinds(nc, settings: Settings) -> list[str]:
    return [e["type"] for e in await stream_events(nc, settings)]


async def authorized(client, order_id: str, amount: int = 10_000) -> c.Payment:
    return await client.call(s.PAYMENT_AUTHORIZE, auth(order_id, amount), c.Payment)


def capture_body(order_id: str, capture_id: str = "cap-1", **more: object) -> dict:
    return {"order_id": order_id, "capture_id": capture_id, **more}


def refund_body(order_id: str, refund_id: str, amount: int, **more: object) -> dict:
    return {"order_id": order_id, "refund_id": refund_id, "amount_cents": amount, **more}


# -- capture ----------------------------------------------------------------------


async def test_a_capture_takes_the_authorization_once_with_its_event(payment, client, nc, settings):
    await authorized(client, "o-1")
    captured = await client.call(s.PAYMENT_CAPTURE, capture_body("o-1"), c.Payment)
    assert (captured.status, captured.captured_cents, captured.capture_id) == ("CAPTURED", 10_000, "cap-1")
    assert captured.refunded_cents == 0 and captured.amount_cents == 10_000
    assert await client.call(s.PAYMENT_CAPTURE, capture_body("o-1"), c.Payment) == captured
    assert await client.call(s.PAYMENT_GET, {"order_id": "o-1"}, c.Payment) == captured
    events = await stream_events(nc, settings)
    assert [e["subject"] for e in events] == [
        "events.payment.payment_authorized.o-1",
        "events.payment.payment_captured.o-1",
    ]
    assert c.Payment.model_validate(events[1]["data"]) == captured


async def test_a_capture_may_take_part_of_the_authorization_never_more(payment, client, nc, settings):
    await authorized(client, "o-2")
    with pytest.raises(Conflict, match="above the 10000 USD authorized") as above:
        await client.call(s.PAYMENT_CAPTURE, capture_body("o-2", amount_cents=10_001))
    assert above.value.details["authorized_cents"] == 10_000
    part = await client.call(s.PAYMENT_CAPTURE, capture_body("o-2", amount_cents=7_500), c.Payment)
    assert (part.status, part.captured_cents, part.amount_cents) == ("CAPTURED", 7_500, 10_000)
    # the same capture id again: the same amount answers it, another is refused
    assert await client.call(s.PAYMENT_CAPTURE, capture_body("o-2", amount_cents=7_500), c.Payment) == part
    with pytest.raises(Conflict, match="took 7500, not 10000"):
        await client.call(s.PAYMENT_CAPTURE, capture_body("o-2"))
    assert await kinds(nc, settings) == ["payment_authorized", "payment_captured"]


async def test_a_capture_whose_reply_is_lost_captures_once_when_sent_again(payment, client, nc, settings):
    await authorized(client, "o-3")
    await client.request("chaos.payment.set", {"drop_reply_rate": 1.0, "endpoints": ["capture"]})
    with pytest.raises(RequestTimeout):
        await client.call(s.PAYMENT_CAPTURE, capture_body("o-3"), timeout_s=0.5, idempotency_key="ship-o-3:capture")
    await client.request("chaos.payment.clear", {})
    again = await client.call(s.PAYMENT_CAPTURE, capture_body("o-3"), c.Payment, idempotency_key="ship-o-3:capture")
    assert (again.status, again.captured_cents) == ("CAPTURED", 10_000)
    # without the key too: the capture id makes it a repeat
    assert await client.call(s.PAYMENT_CAPTURE, capture_body("o-3"), c.Payment) == again
    assert await kinds(nc, settings) == ["payment_authorized", "payment_captured"]


async def test_a_capture_is_refused_where_nothing_authorized_is_left_to_take(payment, client, nc, settings):
    with pytest.raises(NotFound, match="no payment for order o-4"):
        await client.call(s.PAYMENT_CAPTURE, capture_body("o-4"))
    await authorized(client, "o-5")
    await client.call(s.PAYMENT_CAPTURE, capture_body("o-5", "cap-a"))
    with pytest.raises(Conflict, match="captured by cap-a") as other:
        await client.call(s.PAYMENT_CAPTURE, capture_body("o-5", "cap-b"))
    assert other.value.details == {"order_id": "o-5", "capture_id": "cap-b", "status": "CAPTURED"}
    await ask(nc, "payment.authorize", auth("o-6", method="card_declined"))
    with pytest.raises(Conflict, match="is declined"):
        await client.call(s.PAYMENT_CAPTURE, capture_body("o-6"))
    await authorized(client, "o-7")
    await client.call(s.PAYMENT_VOID, {"order_id": "o-7"})
    with pytest.raises(Conflict, match="is voided"):
        await client.call(s.PAYMENT_CAPTURE, capture_body("o-7"))
    await authorized(client, "o-8", amount=0)
    with pytest.raises(Conflict, match="nothing was authorized to capture"):
        await client.call(s.PAYMENT_CAPTURE, capture_body("o-8"))
    assert Counter(await kinds(nc, settings)) == {
        "payment_authorized": 3,
        "payment_captured": 1,
        "payment_declined": 1,
        "payment_voided": 1,
    }


# -- reversal ---------------------------------------------------------------------


async def test_reversing_a_capture_gives_the_money_back_and_refuses_the_capture_id_later(payment, client, nc, settings):
    await authorized(client, "r-1")
    await client.call(s.PAYMENT_CAPTURE, capture_body("r-1"), c.Payment)
    back = await client.call(s.PAYMENT_REVERSE_CAPTURE, capture_body("r-1", reason="ship failed"), c.Payment)
    assert (back.status, back.captured_cents, back.capture_id, back.amount_cents) == ("AUTHORIZED", 0, None, 10_000)
    assert await client.call(s.PAYMENT_REVERSE_CAPTURE, capture_body("r-1"), c.Payment) == back
    with pytest.raises(Conflict, match="cap-1 was reversed; a late capture is refused"):
        await client.call(s.PAYMENT_CAPTURE, capture_body("r-1"))
    # the authorization stands: a capture of another id takes it (a shipment tried again)
    again = await client.call(s.PAYMENT_CAPTURE, capture_body("r-1", "cap-2"), c.Payment)
    assert (again.status, again.capture_id) == ("CAPTURED", "cap-2")
    events = await stream_events(nc, settings)
    assert [e["type"] for e in events] == [
        "payment_authorized",
        "payment_captured",
        "payment_capture_reversed",
        "payment_captured",
    ]
    reversal = events[2]["data"].pop("reversal")
    assert reversal.pop("reversed_at")
    assert reversal == {"capture_id": "cap-1", "tombstone": False, "reason": "ship failed"}
    assert c.Payment.model_validate(events[2]["data"]) == back


async def test_a_reversal_that_overtakes_its_capture_leaves_a_tombstone(payment, client, nc, settings):
    await authorized(client, "r-2")
    stays = await client.call(s.PAYMENT_REVERSE_CAPTURE, capture_body("r-2"), c.Payment)
    assert (stays.status, stays.captured_cents) == ("AUTHORIZED", 0)
    body, headers = await ask(nc, "payment.capture", capture_body("r-2"))
    assert body["error"]["code"] == "CONFLICT" and "late capture is refused" in body["error"]["message"]
    assert headers["Nats-Service-Error-Code"] == "409"
    assert (await client.call(s.PAYMENT_GET, {"order_id": "r-2"}, c.Payment)) == stays
    events = await stream_events(nc, settings)
    assert [e["type"] for e in events] == ["payment_authorized", "payment_capture_reversed"]
    assert events[1]["data"]["reversal"]["tombstone"] is True


async def test_a_reversal_for_an_unknown_order_voids_it_and_refuses_capture_and_authorize(
    payment, client, nc, settings
):
    voided = await client.call(s.PAYMENT_REVERSE_CAPTURE, capture_body("r-3"), c.Payment)
    assert (voided.status, voided.amount_cents, voided.customer_id) == ("VOIDED", 0, None)
    assert await client.call(s.PAYMENT_REVERSE_CAPTURE, capture_body("r-3"), c.Payment) == voided
    with pytest.raises(Conflict, match="late authorize is refused"):
        await client.call(s.PAYMENT_AUTHORIZE, auth("r-3"))
    with pytest.raises(Conflict, match="late capture is refused"):
        await client.call(s.PAYMENT_CAPTURE, capture_body("r-3"))
    assert await kinds(nc, settings) == ["payment_voided", "payment_capture_reversed"]


async def test_a_capture_partly_refunded_is_not_reversed(payment, client, nc, settings):
    await authorized(client, "r-4")
    await client.call(s.PAYMENT_CAPTURE, capture_body("r-4"))
    await client.call(s.PAYMENT_REFUND, refund_body("r-4", "ref-1", 100))
    with pytest.raises(Conflict, match="partly refunded") as refused:
        await client.call(s.PAYMENT_REVERSE_CAPTURE, capture_body("r-4"))
    assert refused.value.details["refundable_cents"] == 9_900
    assert (await client.call(s.PAYMENT_GET, {"order_id": "r-4"}, c.Payment)).status == "PARTIALLY_REFUNDED"


async def test_capture_and_reversal_racing_end_captured_or_reversed_never_both(payment, client, nc, settings):
    for i in range(20):
        await authorized(client, f"x-{i}")
    replies = await asyncio.gather(
        *(
            ask(nc, subject, capture_body(f"x-{i}"))
            for i in range(20)
            for subject in (("payment.capture", "payment.reverse_capture")[:: 1 if i % 2 else -1])
        )
    )
    listed = await client.call(s.PAYMENT_LIST, {}, c.PaymentList)
    for p in listed.payments:
        assert (p.status, p.captured_cents) == ("AUTHORIZED", 0)  # the reversal ran last, or first (a tombstone)
    assert all(body["ok"] or body["error"]["code"] == "CONFLICT" for body, _ in replies)


# -- refunds and voids ------------------------------------------------------------


async def test_partial_refunds_add_up_to_what_was_captured_and_never_past_it(payment, client, nc, settings):
    await authorized(client, "f-1")
    await client.call(s.PAYMENT_CAPTURE, capture_body("f-1", amount_cents=9_000))
    first = await client.call(s.PAYMENT_REFUND, refund_body("f-1", "ref-1", 4_000, reason="one back"), c.Payment)
    assert (first.status, first.refunded_cents, first.captured_cents) == ("PARTIALLY_REFUNDED", 4_000, 9_000)
    assert await client.call(s.PAYMENT_REFUND, refund_body("f-1", "ref-1", 4_000), c.Payment) == first
    with pytest.raises(Conflict, match="ref-1 was of 4000 for order f-1"):
        await client.call(s.PAYMENT_REFUND, refund_body("f-1", "ref-1", 4_001))
    with pytest.raises(Conflict, match="more than the 5000 USD left to refund") as past:
        await client.call(s.PAYMENT_REFUND, refund_body("f-1", "ref-2", 5_001))
    assert past.value.details["refundable_cents"] == 5_000
    rest = await client.call(s.PAYMENT_REFUND, refund_body("f-1", "ref-2", 5_000), c.Payment)
    assert (rest.status, rest.refunded_cents) == ("REFUNDED", 9_000)
    with pytest.raises(Conflict, match="is refunded: nothing captured is left to refund"):
        await client.call(s.PAYMENT_REFUND, refund_body("f-1", "ref-3", 1))
    assert await client.call(s.PAYMENT_REFUND, refund_body("f-1", "ref-1", 4_000), c.Payment) == rest
    # the capture is done: a repeat of it answers the payment as it is now
    assert await client.call(s.PAYMENT_CAPTURE, capture_body("f-1", amount_cents=9_000), c.Payment) == rest
    events = await stream_events(nc, settings)
    refunds = [e["data"] for e in events if e["type"] == "payment_refunded"]
    assert [r["refund"] for r in refunds] == [
        {"refund_id": "ref-1", "amount_cents": 4_000},
        {"refund_id": "ref-2", "amount_cents": 5_000},
    ]
    assert refunds[0]["reason"] == "one back"
    assert c.Payment.model_validate(refunds[1]) == rest


async def test_refunds_racing_pass_at_most_what_was_captured(payment, client, nc, settings):
    await authorized(client, "f-2")
    await client.call(s.PAYMENT_CAPTURE, capture_body("f-2"))
    replies = await asyncio.gather(
        *(ask(nc, "payment.refund", refund_body("f-2", f"race-{i}", 3_000)) for i in range(10)),
        *(ask(nc, "payment.refund", refund_body("f-2", "race-same", 1_000)) for _ in range(5)),
    )
    outcomes = Counter("OK" if body["ok"] else body["error"]["code"] for body, _ in replies)
    passed = {body["result"]["refunded_cents"] for body, _ in replies if body["ok"]}
    final = await client.call(s.PAYMENT_GET, {"order_id": "f-2"}, c.Payment)
    assert final.refunded_cents <= final.captured_cents == 10_000
    refunded = [e["data"]["refund"] for e in await stream_events(nc, settings) if e["type"] == "payment_refunded"]
    assert sum(r["amount_cents"] for r in refunded) == final.refunded_cents
    assert sorted(r["refund_id"] for r in refunded).count("race-same") <= 1
    assert outcomes["OK"] >= 3 and outcomes["OK"] + outcomes["CONFLICT"] == 15 and max(passed) <= 10_000


async def test_a_refund_without_an_amount_is_a_void_and_refused_once_captured(payment, client, nc, settings):
    await authorized(client, "v-1")
    voided = await client.call(s.PAYMENT_VOID, {"order_id": "v-1", "reason": "cancelled"}, c.Payment)
    assert (voided.status, voided.amount_cents) == ("VOIDED", 10_000)
    assert await client.call(s.PAYMENT_REFUND, {"order_id": "v-1"}, c.Payment) == voided
    tomb = await client.call(s.PAYMENT_VOID, {"order_id": "v-2"}, c.Payment)
    assert (tomb.status, tomb.amount_cents) == ("VOIDED", 0)
    await authorized(client, "v-3")
    await client.call(s.PAYMENT_CAPTURE, capture_body("v-3"))
    for subject in ("payment.refund", "payment.void"):
        body, _ = await ask(nc, subject, {"order_id": "v-3"})
        assert body["error"]["code"] == "CONFLICT" and "captured: refund an amount" in body["error"]["message"]
        assert body["error"]["details"]["refundable_cents"] == 10_000
    with pytest.raises(Conflict, match="is voided: nothing captured is left to refund"):
        await client.call(s.PAYMENT_REFUND, refund_body("v-1", "ref-v-1", 1))
    with pytest.raises(NotFound):
        await client.call(s.PAYMENT_REFUND, refund_body("v-5", "ref-v-5", 1))
    assert (await client.call(s.PAYMENT_GET, {"order_id": "v-3"}, c.Payment)).status == "CAPTURED"
    assert Counter(await kinds(nc, settings)) == {
        "payment_authorized": 2,
        "payment_voided": 2,
        "payment_captured": 1,
    }


MUTATIONS = [
    pytest.param("payment.capture", capture_body("k-1"), capture_body("k-1", amount_cents=1), id="capture"),
    pytest.param("payment.reverse_capture", capture_body("k-1"), capture_body("k-1", "other"), id="reverse"),
    pytest.param("payment.refund", refund_body("k-1", "ref-k", 10), refund_body("k-1", "ref-k", 11), id="refund"),
    pytest.param("payment.void", {"order_id": "k-1"}, {"order_id": "k-2"}, id="void"),
]


@pytest.mark.parametrize(("subject", "body", "other"), MUTATIONS)
async def test_a_repeated_idempotency_key_replays_the_reply_and_changes_nothing(
    payment, client, nc, settings, subject, body, other
):
    await authorized(client, "k-1")
    await client.call(s.PAYMENT_CAPTURE, capture_body("k-0") | {"order_id": "k-1", "capture_id": "cap-k"})
    first, _ = await ask(nc, subject, body, key="key-1")
    before = await stream_events(nc, settings)
    repeats = await asyncio.gather(*(ask(nc, subject, body, key="key-1") for _ in range(5)))
    assert all(reply == first for reply, _ in repeats)
    conflict, _ = await ask(nc, subject, other, key="key-1")
    assert conflict["error"]["code"] == "CONFLICT" and conflict["error"]["details"]["field"] == "Idempotency-Key"
    assert await stream_events(nc, settings) == before


HOSTILE = [
    ("payment.capture", {"order_id": "h"}),
    ("payment.capture", capture_body("h", amount_cents=0)),
    ("payment.capture", capture_body("h", amount_cents=-1)),
    ("payment.capture", capture_body("h", amount_cents="5")),
    ("payment.capture", capture_body("h", amount_cents=10**13)),
    ("payment.capture", capture_body("h", "has space")),
    ("payment.capture", capture_body("h", "x" * 129)),
    ("payment.capture", capture_body("h", extra=1)),
    ("payment.reverse_capture", capture_body("h", reason="r" * 201)),
    ("payment.reverse_capture", {"capture_id": "c"}),
    ("payment.refund", {"order_id": "h", "amount_cents": 5}),
    ("payment.refund", {"order_id": "h", "refund_id": "ref"}),
    ("payment.refund", refund_body("h", "ref", 0)),
    ("payment.refund", refund_body("h", "ref", 1.5)),
    ("payment.refund", refund_body("h", "", 1)),
    ("payment.void", {"order_id": "h", "amount_cents": 5}),
    ("payment.void", {}),
    ("payment.list", {"status": "SHIPPED"}),
]


async def test_hostile_payloads_answer_validation_error_naming_the_field_and_change_nothing(
    payment, client, nc, settings
):
    await authorized(client, "h")
    before = await stream_events(nc, settings)
    for subject, payload in HOSTILE:
        body, headers = await ask(nc, subject, payload)
        assert body["ok"] is False and body["error"]["code"] == "VALIDATION_ERROR", (subject, payload, body)
        assert headers["Nats-Service-Error-Code"] == "400"
    body, _ = await ask(nc, "payment.refund", {"order_id": "h", "refund_id": "ref"})
    assert "amount_cents: a refund with a refund_id needs its amount_cents" in body["error"]["message"]
    body, _ = await ask(nc, "payment.capture", capture_body("h", amount_cents=0))
    assert body["error"]["details"]["errors"][0]["field"] == "amount_cents"
    assert await stream_events(nc, settings) == before
    assert (await client.call(s.PAYMENT_GET, {"order_id": "h"}, c.Payment)).status == "AUTHORIZED"
