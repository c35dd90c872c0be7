"""Faults injected into running services, each test ending with the invariant audit."""

from __future__ import annotations

import asyncio
import json

import pytest

from bus import subjects as s
from bus.audit import run_audit
from bus.settings import BreakerSettings, SagaSettings, Settings
from tests.conftest import place, wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture
async def settings(settings: Settings) -> Settings:
    """Short timeouts and retries so that faults play out in a second or two."""
    return settings.model_copy(
        update={
            "saga": SagaSettings(
                step_timeout_ms=300,
                deadline_ms=8000,
                retry_initial_ms=20,
                retry_max_interval_ms=150,
                retry_max_attempts=6,
            ),
            "breaker": BreakerSettings(threshold=3, ttl_ms=400),
        }
    )


async def chaos(stack, service, **config):
    return await stack["client"].request(f"chaos.{service}.set", config)


async def clear(stack, service):
    await stack["client"].request(f"chaos.{service}.clear", {})


async def order(stack, order_id):
    return await stack["client"].call(s.ORDERS_GET, {"order_id": order_id})


async def terminal(stack, order_id, timeout=15.0):
    async def done():
        o = await order(stack, order_id)
        return o if o["status"] in ("CONFIRMED", "FAILED", "CANCELLED") else None

    return await wait_for(done, timeout=timeout, what=f"order {order_id} to end")


async def audit_clean(stack, settings):
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    assert report.ok, json.dumps(report.to_dict(), indent=1)


async def endpoint_requests(stack, service, endpoint):
    msg = await stack["nc"].request(f"$SRV.STATS.{service}", b"", timeout=2)
    stats = json.loads(msg.data)
    return next(e["num_requests"] for e in stats["endpoints"] if e["name"] == endpoint)


async def test_a_dropped_authorize_reply_is_retried_with_the_same_key_and_charges_once(stack, settings):
    await chaos(stack, "payment", drop_reply_rate=1.0, endpoints=["authorize"])
    placed = await place(stack, wait_ms=0)

    async def charged():
        try:
            return await stack["client"].call(s.PAYMENT_GET, {"order_id": placed["order_id"]})
        except Exception:
            return None

    await wait_for(charged, what="the authorization to be made (its reply is dropped)")
    await clear(stack, "payment")
    final = await terminal(stack, placed["order_id"])
    assert final["status"] == "CONFIRMED"
    authorize = next(step for step in final["saga"]["steps"] if step["step"] == "authorize_payment")
    assert authorize["attempts"] >= 2
    payments = await stack["client"].call(s.PAYMENT_LIST, {})
    mine = [p for p in payments["payments"] if p["order_id"] == placed["order_id"]]
    assert len(mine) == 1 and mine[0]["status"] == "AUTHORIZED"
    await audit_clean(stack, settings)


async def test_reserve_slower_than_the_step_timeout_never_leaks_a_reservation(stack, settings):
    await chaos(stack, "inventory", latency_ms=350, latency_jitter_ms=200, endpoints=["reserve"], seed=7)
    orders = await asyncio.gather(*(place(stack, customer=f"slow{i}", wait_ms=0) for i in range(5)))
    finals = [await terminal(stack, o["order_id"], timeout=20) for o in orders]
    await clear(stack, "inventory")
    assert {f["status"] for f in finals} <= {"CONFIRMED", "FAILED"}
    for f in finals:
        if f["status"] == "FAILED":
            reservations = await stack["client"].call(s.INVENTORY_RESERVATIONS, {"order_id": f["order_id"]})
            assert all(r["status"] == "RELEASED" for r in reservations["reservations"])
    # the late reserves that arrive after their release are refused: wait until they have all landed
    await wait_for(lambda: stack["inventory"].runner.in_flight == 0, what="delayed reserves to finish")
    await audit_clean(stack, settings)


async def test_the_breaker_stops_calls_to_a_failing_service_and_closes_after_it_recovers(stack, settings):
    transitions: list[tuple[str, str]] = stack["orders"].extras["breaker_transitions"]
    before = await endpoint_requests(stack, "payment", "authorize")
    await chaos(stack, "payment", error_rate=1.0, endpoints=["authorize"])
    orders = await asyncio.gather(*(place(stack, customer=f"b{i}", wait_ms=0) for i in range(3)))
    breakers = stack["orders"].extras["breakers"]
    await wait_for(lambda: breakers.state("payment") == "open", what="the breaker to open")
    await wait_for(lambda: sum(1 for _, new in transitions if new == "half_open") >= 3, timeout=10, what="three probes")
    sent = await endpoint_requests(stack, "payment", "authorize") - before
    probes = sum(1 for _, new in transitions if new == "half_open")
    # without the breaker each saga would retry six times; with it, only the threshold, the calls
    # already in flight when it opened, and one probe per half-open reach the service
    assert sent <= settings.breaker.threshold + len(orders) + probes, (sent, transitions)
    await clear(stack, "payment")
    finals = [await terminal(stack, o["order_id"]) for o in orders]
    assert all(f["status"] == "CONFIRMED" for f in finals), finals
    assert breakers.state("payment") == "closed"
    assert ("half_open", "closed") in transitions
    await audit_clean(stack, settings)


async def test_cancel_while_running_stops_at_the_next_step_and_compensates(stack, settings):
    await chaos(stack, "payment", latency_ms=200, endpoints=["authorize"])
    placed = await place(stack, wait_ms=0)

    async def reserving_done():
        o = await order(stack, placed["order_id"])
        return o["total_cents"] is not None

    await wait_for(reserving_done, what="the reservation")
    cancelled = await stack["client"].call(s.ORDERS_CANCEL, {"order_id": placed["order_id"], "reason": "too slow"})
    await clear(stack, "payment")
    final = await terminal(stack, placed["order_id"])
    assert final["status"] == "CANCELLED", (cancelled, final)
    await audit_clean(stack, settings)


async def test_a_late_authorize_after_the_refund_is_refused(stack, settings):
    await stack["client"].call(s.PAYMENT_REFUND, {"order_id": "ord_late1"})
    with pytest.raises(Exception) as refused:
        await stack["client"].call(
            s.PAYMENT_AUTHORIZE,
            {"order_id": "ord_late1", "customer_id": "c1", "amount_cents": 100, "currency": "USD", "method": "card"},
        )
    assert getattr(refused.value, "code", None) == "CONFLICT"
    await stack["client"].call(s.INVENTORY_RELEASE, {"order_id": "ord_late2"})
    with pytest.raises(Exception) as refused:
        await stack["client"].call(
            s.INVENTORY_RESERVE, {"order_id": "ord_late2", "items": [{"sku": "KB-101", "qty": 1}]}
        )
    assert getattr(refused.value, "code", None) == "CONFLICT"
    await audit_clean(stack, settings)
