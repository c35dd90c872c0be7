"""The payment service over real NATS: authorizations, decline rules, refunds, idempotency, hostile input."""

from __future__ import annotations

import asyncio

import pytest

from bus import contract as c
from bus import subjects as s
from bus.app import running
from bus.errors import Conflict, NotFound, PaymentDeclined
from bus.settings import Settings
from payment_svc.service import SPEC
from tests.conftest import ask, stream_events


@pytest.fixture
async def payment(settings: Settings):
    async with running(SPEC, settings, serve_metrics=False) as kernel:
        yield kernel


async def timeline(nc, settings: Settings) -> list[str]:
    return [e["subject"] for e in await stream_events(nc, settings)]


def auth(order_id: str, amount: int = 12_300, method: str = "card", currency: str = "USD") -> dict:
    return {
        "order_id": order_id,
        "customer_id": "cust-1",
        "amount_cents": amount,
        "currency": currency,
        "method": method,
    }


async def test_a_card_payment_is_authorized_with_its_event(payment, client, nc, settings):
    paid = await client.call(s.PAYMENT_AUTHORIZE, auth("o-1"), c.Payment)
    assert (paid.status, paid.amount_cents, paid.currency, paid.method) == ("AUTHORIZED", 12_300, "USD", "card")
    assert paid.customer_id == "cust-1" and paid.decline_reason is None
    assert await client.call(s.PAYMENT_GET, {"order_id": "o-1"}, c.Payment) == paid
    events = await stream_events(nc, settings)
    assert [e["subject"] for e in events] == ["events.payment.payment_authorized.o-1"]
    assert events[0]["order_id"] == "o-1" and events[0]["service"] == "payment"
    assert c.Payment.model_validate(events[0]["data"]) == paid


@pytest.mark.parametrize(
    ("method", "amount", "reason"),
    [
        ("card_declined", 100, "card_declined"),
        ("card_insufficient_funds", 100, "insufficient_funds"),
        ("card", 500_001, "amount_over_limit"),
    ],
)
async def test_decline_rules_record_the_payment_and_answer_402(payment, client, nc, settings, method, amount, reason):
    body, headers = await ask(nc, "payment.authorize", auth("o-2", amount, method))
    assert body["error"]["code"] == "PAYMENT_DECLINED" and body["error"]["details"] == {"reason": reason}
    assert reason in body["error"]["message"] and body["error"]["retryable"] is False
    assert headers["Nats-Service-Error-Code"] == "402" and reason in headers["Nats-Service-Error"]
    recorded = await client.call(s.PAYMENT_GET, {"order_id": "o-2"}, c.Payment)
    assert (recorded.status, recorded.decline_reason, recorded.amount_cents) == ("DECLINED", reason, amount)
    again, _ = await ask(nc, "payment.authorize", auth("o-2", amount, method))
    assert again == body
    events = await stream_events(nc, settings)
    assert [e["subject"] for e in events] == ["events.payment.payment_declined.o-2"]
    assert events[0]["data"]["decline_reason"] == reason


async def test_the_limit_itself_is_approved(payment, client, settings):
    paid = await client.call(s.PAYMENT_AUTHORIZE, auth("o-3", settings.payment_limit_cents), c.Payment)
    assert paid.status == "AUTHORIZED"


async def test_authorize_is_idempotent_by_order_id_and_refuses_a_different_amount(payment, client, nc, settings):
    first = await client.call(s.PAYMENT_AUTHORIZE, auth("o-4"), c.Payment)
    repeats = await asyncio.gather(*(client.call(s.PAYMENT_AUTHORIZE, auth("o-4"), c.Payment) for _ in range(5)))
    assert all(r == first for r in repeats)
    with pytest.raises(Conflict, match="already authorized") as other_amount:
        await client.call(s.PAYMENT_AUTHORIZE, auth("o-4", amount=1))
    assert other_amount.value.details["amount_cents"] == 12_300
    with pytest.raises(Conflict):
        await client.call(s.PAYMENT_AUTHORIZE, auth("o-4", currency="EUR"))
    assert await timeline(nc, settings) == ["events.payment.payment_authorized.o-4"]


async def test_refund_of_an_authorized_payment_voids_it_once_and_refuses_a_late_authorize(
    payment, client, nc, settings
):
    await client.call(s.PAYMENT_AUTHORIZE, auth("o-5"), c.Payment)
    voided = await client.call(s.PAYMENT_REFUND, {"order_id": "o-5", "reason": "cancelled"}, c.Payment)
    assert (voided.status, voided.amount_cents, voided.method) == ("VOIDED", 12_300, "card")
    assert await client.call(s.PAYMENT_REFUND, {"order_id": "o-5"}, c.Payment) == voided
    body, headers = await ask(nc, "payment.authorize", auth("o-5"))
    assert body["error"]["code"] == "CONFLICT" and "was voided; a late authorize is refused" in body["error"]["message"]
    assert headers["Nats-Service-Error-Code"] == "409"
    events = await stream_events(nc, settings)
    assert [e["subject"] for e in events] == [
        "events.payment.payment_authorized.o-5",
        "events.payment.payment_voided.o-5",
    ]
    assert events[1]["data"] == voided.model_dump() | {"reason": "cancelled", "tombstone": False}


async def test_refund_of_a_declined_payment_voids_it(payment, client, nc, settings):
    with pytest.raises(PaymentDeclined):
        await client.call(s.PAYMENT_AUTHORIZE, auth("o-6", method="card_declined"))
    voided = await client.call(s.PAYMENT_REFUND, {"order_id": "o-6"}, c.Payment)
    assert (voided.status, voided.decline_reason) == ("VOIDED", "card_declined")
    with pytest.raises(Conflict, match="was voided"):
        await client.call(s.PAYMENT_AUTHORIZE, auth("o-6", method="card_declined"))
    assert await timeline(nc, settings) == [
        "events.payment.payment_declined.o-6",
        "events.payment.payment_voided.o-6",
    ]


async def test_refund_of_an_unknown_order_leaves_a_voided_tombstone_and_refuses_a_late_authorize(
    payment, client, nc, settings
):
    voided = await client.call(s.PAYMENT_REFUND, {"order_id": "o-7"}, c.Payment)
    assert (voided.status, voided.amount_cents, voided.currency) == ("VOIDED", 0, settings.currency)
    assert voided.customer_id is None and voided.method is None
    assert await client.call(s.PAYMENT_REFUND, {"order_id": "o-7"}, c.Payment) == voided
    with pytest.raises(Conflict, match="late authorize is refused"):
        await client.call(s.PAYMENT_AUTHORIZE, auth("o-7"))
    events = await stream_events(nc, settings)
    assert [e["subject"] for e in events] == ["events.payment.payment_voided.o-7"]
    assert events[0]["data"]["tombstone"] is True


async def test_get_answers_not_found_and_list_pages_by_order_id(payment, client, nc):
    with pytest.raises(NotFound, match="o-8"):
        await client.call(s.PAYMENT_GET, {"order_id": "o-8"})
    body, headers = await ask(nc, "payment.get", {"order_id": "o-8"})
    assert body["error"]["details"] == {"order_id": "o-8"} and headers["Nats-Service-Error-Code"] == "404"
    await client.call(s.PAYMENT_AUTHORIZE, auth("a-1"))
    await client.call(s.PAYMENT_AUTHORIZE, auth("a-2"))
    await ask(nc, "payment.authorize", auth("d-1", method="card_declined"))
    await client.call(s.PAYMENT_REFUND, {"order_id": "a-2"})
    listed = await client.call(s.PAYMENT_LIST, {}, c.PaymentList)
    assert sorted(p.order_id for p in listed.payments) == ["a-1", "a-2", "d-1"]
    only = await client.call(s.PAYMENT_LIST, {"status": "AUTHORIZED"}, c.PaymentList)
    assert [p.order_id for p in only.payments] == ["a-1"]
    page = await client.call(s.PAYMENT_LIST, {"limit": 2}, c.PaymentList)
    assert [p.order_id for p in page.payments] == ["a-1", "a-2"]
    rest = await client.call(s.PAYMENT_LIST, {"limit": 2, "after": "a-2"}, c.PaymentList)
    assert [(p.order_id, p.status) for p in rest.payments] == [("d-1", "DECLINED")]


MUTATIONS = [
    pytest.param("payment.authorize", auth("k-1"), auth("k-1", amount=1), "OK", id="authorize"),
    pytest.param(
        "payment.authorize",
        auth("k-2", method="card_declined"),
        auth("k-2"),
        "PAYMENT_DECLINED",
        id="authorize-declined",
    ),
    pytest.param("payment.refund", {"order_id": "k-3"}, {"order_id": "k-4"}, "OK", id="refund"),
]


@pytest.mark.parametrize(("subject", "body", "other", "outcome"), MUTATIONS)
async def test_a_repeated_idempotency_key_replays_the_reply_and_changes_nothing(
    payment, client, nc, settings, subject, body, other, outcome
):
    first, _ = await ask(nc, subject, body, key="key-1")
    assert ("OK" if first["ok"] else first["error"]["code"]) == outcome
    before = await stream_events(nc, settings)
    assert len(before) == 1
    repeats = await asyncio.gather(*(ask(nc, subject, body, key="key-1") for _ in range(5)))
    assert all(reply == first for reply, _ in repeats)
    conflict, headers = await ask(nc, subject, other, key="key-1")
    assert conflict["error"]["code"] == "CONFLICT" and conflict["error"]["details"]["field"] == "Idempotency-Key"
    assert headers["Nats-Service-Error-Code"] == "409"
    assert await stream_events(nc, settings) == before
    listed = await client.call(s.PAYMENT_LIST, {}, c.PaymentList)
    assert len(listed.payments) == 1


HOSTILE = [
    ("payment.authorize", b"{not json"),
    ("payment.authorize", b"[]"),
    ("payment.authorize", b"[" * 100_000),
    ("payment.authorize", auth("v") | {"amount_cents": "100"}),
    ("payment.authorize", auth("v") | {"amount_cents": 1.5}),
    ("payment.authorize", auth("v") | {"amount_cents": -1}),
    ("payment.authorize", auth("v") | {"amount_cents": 10**13}),
    ("payment.authorize", auth("v", currency="usd")),
    ("payment.authorize", auth("v", method="cash")),
    ("payment.authorize", auth("v") | {"customer_id": ""}),
    ("payment.authorize", auth("v") | {"extra": True}),
    ("payment.authorize", {"order_id": "v"}),
    ("payment.authorize", b'{"order_id":"' + b"x" * 900_000 + b'"}'),
    ("payment.refund", {"order_id": None}),
    ("payment.refund", {"order_id": "v", "reason": "r" * 201}),
    ("payment.get", {}),
    ("payment.list", {"status": "PAID"}),
    ("payment.list", {"limit": 0}),
    ("payment.list", {"limit": 1001}),
    ("payment.list", {"after": "a b"}),
]


async def test_hostile_payloads_answer_validation_error_and_change_nothing(payment, client, nc, settings):
    for subject, payload in HOSTILE:
        body, headers = await ask(nc, subject, payload)
        assert body["ok"] is False and body["error"]["code"] == "VALIDATION_ERROR", (subject, payload, body)
        assert headers["Nats-Service-Error-Code"] == "400" and headers["Nats-Service-Error"]
    bad_key, _ = await ask(nc, "payment.refund", {"order_id": "v"}, key="k" * 129)
    assert bad_key["error"]["code"] == "VALIDATION_ERROR"
    assert (await client.call(s.PAYMENT_LIST, {}, c.PaymentList)).payments == []
    assert (await nc.jetstream().stream_info(settings.stream_name)).state.messages == 0
