"""Leases in a JetStream KV bucket, on a real nats-server: one holder at a time, renewals fenced by revision,
expiry, release, and a keeper that notices a pause past its TTL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bus.lease import Held, Keeper, Leases
from tests.conftest import wait_for


@pytest.fixture
async def leases(nc: Any, request: pytest.FixtureRequest) -> Any:
    bucket = f"LEASES_{abs(hash(request.node.name)) % 10**8}"
    opened = await Leases(nc.jetstream(), ttl_s=2, bucket=bucket).open()
    yield opened
    await nc.jetstream().delete_key_value(bucket)


async def test_one_holder_at_a_time_and_a_release_frees_the_key(leases: Leases):
    first = await leases.acquire("orders.p00", "a")
    assert first is not None
    assert await leases.acquire("orders.p00", "b") is None
    assert await leases.holder("orders.p00") == ("a", first.revision)
    await leases.release(first)
    second = await leases.acquire("orders.p00", "b")
    assert second is not None and (await leases.holder("orders.p00"))[0] == "b"


async def test_a_renewal_at_a_stale_revision_is_refused(leases: Leases):
    held = await leases.acquire("orders.p01", "a")
    assert held is not None
    renewed = await leases.renew(held)
    assert renewed is not None and renewed.revision > held.revision
    assert await leases.renew(held) is None  # the revision it knew is gone: fenced
    await leases.release(held)  # a stale release must not free the key either
    assert (await leases.holder("orders.p01"))[0] == "a"


async def test_an_unrenewed_lease_expires_and_another_instance_takes_it(leases: Leases):
    held = await leases.acquire("orders.p02", "a")
    assert held is not None
    started = time.monotonic()
    taken = await wait_for(lambda: leases.acquire("orders.p02", "b"), timeout=10, interval=0.1, what="expiry")
    assert time.monotonic() - started >= leases.ttl_s - 0.5
    assert await leases.renew(held) is None  # the old holder learns it on its next write
    assert isinstance(taken, Held) and taken.holder == "b"


async def test_a_keeper_holds_the_lease_and_gives_up_when_paused_past_its_ttl(leases: Leases):
    held = await leases.acquire("orders.p03", "a")
    assert held is not None
    lost: list[Held] = []
    keeper = Keeper(leases, held, lost.append).start()
    try:
        await asyncio.sleep(0)  # (the keeper's first renewal is a third of the TTL away)
        deadline = time.monotonic() + 3 * leases.ttl_s
        while time.monotonic() < deadline:  # renewed through three TTLs: nobody else gets it
            assert await leases.acquire("orders.p03", "b") is None
            await asyncio.sleep(0.2)
        assert keeper.still_held() and not lost
        # The fault: the whole process stops past the TTL (as under SIGSTOP), so no renewal can run.
        time.sleep(leases.ttl_s + 0.5)  # noqa: ASYNC251
        assert not keeper.still_held()  # it can tell before it writes anything
        await wait_for(lambda: lost, timeout=5, what="the keeper to give the lease up")
        assert await wait_for(lambda: leases.acquire("orders.p03", "b"), timeout=10, interval=0.1)
    finally:
        await keeper.stop()
