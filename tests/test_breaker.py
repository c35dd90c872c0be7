"""Circuit breakers with a fake clock: no broker, no sleeps."""

from __future__ import annotations

import asyncio
import traceback
from contextlib import AbstractAsyncContextManager

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bus.breaker import STATE_VALUE, Breakers
from bus.errors import (
    BreakerOpen,
    InternalError,
    NoResponders,
    OmsError,
    OutOfStock,
    PaymentDeclined,
    RequestTimeout,
    Unavailable,
)
from bus.settings import BreakerSettings

SETTINGS = BreakerSettings(threshold=3, ttl_ms=2000)
TTL_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def breakers(clock: FakeClock, changes: list[tuple[str, str, str]]) -> Breakers:
    return Breakers(SETTINGS, clock=clock, on_change=lambda *change: changes.append(change))


async def call(breakers: Breakers, service: str, error: BaseException | None = None) -> bool:
    """One guarded call that raises `error`; True when the body ran."""
    ran = False
    try:
        async with breakers.guard(service):
            ran = True
            if error is not None:
                raise error
    except OmsError:
        pass  # the error itself, or BreakerOpen when the body did not run
    return ran


async def trip(breakers: Breakers, service: str = "payment") -> None:
    for _ in range(SETTINGS.threshold):
        await call(breakers, service, RequestTimeout("no reply"))
    assert breakers.state(service) == "open"


@pytest.mark.parametrize("error", [RequestTimeout("t"), NoResponders("n"), Unavailable("u")])
async def test_opens_after_threshold_consecutive_transient_failures(breakers: Breakers, error: OmsError):
    for _ in range(SETTINGS.threshold - 1):
        with pytest.raises(type(error)) as raised:
            async with breakers.guard("payment"):
                raise error
        assert raised.value is error
        assert breakers.state("payment") == "closed"
    await call(breakers, "payment", error)
    assert breakers.state("payment") == "open"
    assert STATE_VALUE[breakers.state("payment")] == 2


async def test_business_errors_never_open_it_and_reset_the_count(breakers: Breakers):
    for _ in range(10):
        await call(breakers, "payment", PaymentDeclined("declined"))
        await call(breakers, "payment", InternalError("bug"))
        await call(breakers, "payment", BreakerOpen("a nested breaker"))
    assert breakers.state("payment") == "closed"
    for _ in range(3):
        await call(breakers, "payment", RequestTimeout("t"))
        await call(breakers, "payment", RequestTimeout("t"))
        await call(breakers, "payment", OutOfStock("none left"))
    assert breakers.state("payment") == "closed"


async def test_open_refuses_without_running_the_body_with_a_fresh_short_exception(breakers: Breakers, clock: FakeClock):
    await trip(breakers)
    clock.advance(0.5)
    refusals = []
    for _ in range(50):
        ran = False
        with pytest.raises(BreakerOpen) as raised:
            async with breakers.guard("payment"):
                ran = True
        assert not ran
        refusals.append(raised.value)
    assert len({id(exc) for exc in refusals}) == 50
    depths = {len(traceback.extract_tb(exc.__traceback__)) for exc in refusals}
    assert len(depths) == 1 and depths.pop() <= 6
    first = refusals[0]
    assert str(first) == "circuit breaker for payment is open; retry in 1.5s"
    assert first.details == {"target": "payment", "retry_in_s": 1.5}
    assert first.retryable and first.code == "UNAVAILABLE"


async def test_half_open_lets_exactly_one_of_20_concurrent_calls_through(breakers: Breakers, clock: FakeClock):
    await trip(breakers)
    clock.advance(TTL_S)
    entered = refused = 0
    decided, release = asyncio.Event(), asyncio.Event()

    async def caller() -> None:
        nonlocal entered, refused
        try:
            async with breakers.guard("payment"):
                entered += 1
                if entered + refused == 20:
                    decided.set()
                await release.wait()
        except BreakerOpen as exc:
            assert "half-open" in str(exc)
            refused += 1
            if entered + refused == 20:
                decided.set()

    tasks = [asyncio.create_task(caller()) for _ in range(20)]
    await asyncio.wait_for(decided.wait(), timeout=5)
    assert (entered, refused) == (1, 19)
    assert breakers.state("payment") == "half_open"
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert breakers.state("payment") == "closed"


async def test_probe_success_closes(breakers: Breakers, clock: FakeClock):
    await trip(breakers)
    clock.advance(TTL_S)
    assert await call(breakers, "payment")
    assert breakers.state("payment") == "closed"
    assert await call(breakers, "payment")


async def test_probe_failure_reopens_for_another_ttl(breakers: Breakers, clock: FakeClock):
    await trip(breakers)
    clock.advance(TTL_S)
    assert await call(breakers, "payment", NoResponders("nobody"))
    assert breakers.state("payment") == "open"
    clock.advance(TTL_S - 0.001)
    assert not await call(breakers, "payment")
    clock.advance(0.001)
    assert await call(breakers, "payment")
    assert breakers.state("payment") == "closed"


async def test_on_change_sees_closed_open_half_open_closed(
    breakers: Breakers, clock: FakeClock, changes: list[tuple[str, str, str]]
):
    await trip(breakers)
    clock.advance(TTL_S)
    await call(breakers, "payment")
    assert changes == [
        ("payment", "closed", "open"),
        ("payment", "open", "half_open"),
        ("payment", "half_open", "closed"),
    ]


async def test_breakers_are_independent_per_service(breakers: Breakers):
    await trip(breakers, "payment")
    assert await call(breakers, "inventory")
    assert not await call(breakers, "payment")
    assert breakers.states() == {"payment": "open", "inventory": "closed"}
    assert breakers.state("orders") == "closed"


async def test_a_late_answer_sent_before_opening_does_not_decide_the_probe(breakers: Breakers, clock: FakeClock):
    slow = breakers.guard("payment")
    await slow.__aenter__()
    await trip(breakers)
    clock.advance(TTL_S)
    probe = breakers.guard("payment")
    await probe.__aenter__()
    await slow.__aexit__(None, None, None)
    assert breakers.state("payment") == "half_open"
    failure = RequestTimeout("t")
    assert not await probe.__aexit__(RequestTimeout, failure, None)
    assert breakers.state("payment") == "open"


async def test_a_cancelled_probe_frees_the_slot_without_a_verdict(breakers: Breakers, clock: FakeClock):
    await trip(breakers)
    clock.advance(TTL_S)
    started = asyncio.Event()

    async def probe() -> None:
        async with breakers.guard("payment"):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await asyncio.wait_for(started.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breakers.state("payment") == "half_open"
    assert await call(breakers, "payment")
    assert breakers.state("payment") == "closed"


async def test_a_failing_on_change_does_not_replace_the_callers_error(clock: FakeClock):
    def broken(target: str, old: str, new: str) -> None:
        raise RuntimeError("metrics are down")

    breakers = Breakers(SETTINGS, clock=clock, on_change=broken)
    error = RequestTimeout("t")
    for _ in range(SETTINGS.threshold):
        with pytest.raises(RequestTimeout) as raised:
            async with breakers.guard("payment"):
                raise error
        assert raised.value is error
    assert breakers.state("payment") == "open"


OUTCOMES = {
    "success": lambda: None,
    "business": lambda: PaymentDeclined("declined"),
    "transient": lambda: RequestTimeout("no reply"),
}
# Weighted towards failures and ttl-sized steps, so most runs open, half-open and probe.
OUTCOME = st.sampled_from(["success", "business", "transient", "transient", "transient"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), OUTCOME),
        st.tuples(st.just("start"), st.none()),
        st.tuples(st.just("finish"), st.tuples(st.integers(0, 9), st.one_of(OUTCOME, st.just("cancel")))),
        st.tuples(st.just("advance"), st.one_of(st.sampled_from([1, 1999, 2000]), st.integers(0, 2500))),
    ),
    min_size=30,
    max_size=100,
)
LEGAL = {("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")}


async def scenario(ops: list[tuple[str, object]]) -> None:
    clock = FakeClock()
    opened_at = -TTL_S
    in_flight: list[tuple[AbstractAsyncContextManager[None], bool]] = []  # (guard, admitted as the half-open probe)

    def on_change(target: str, old: str, new: str) -> None:
        nonlocal opened_at
        assert (old, new) in LEGAL
        if new == "open":
            opened_at = clock()

    breakers = Breakers(SETTINGS, clock=clock, on_change=on_change)

    async def start() -> AbstractAsyncContextManager[None] | None:
        before = breakers.state("svc")
        probing = any(probe for _, probe in in_flight)
        must_refuse = (before == "open" and clock() < opened_at + TTL_S) or probing
        guard = breakers.guard("svc")
        try:
            await guard.__aenter__()
        except BreakerOpen:
            assert must_refuse, (before, clock(), opened_at)
            return None
        assert not must_refuse, (before, clock(), opened_at)
        in_flight.append((guard, breakers.state("svc") == "half_open"))
        return guard

    async def finish(index: int, outcome: str) -> None:
        guard, _ = in_flight.pop(index % len(in_flight))
        error = asyncio.CancelledError() if outcome == "cancel" else OUTCOMES[outcome]()
        if error is None:
            await guard.__aexit__(None, None, None)
        else:
            assert await guard.__aexit__(type(error), error, None) is False  # not swallowed

    for op, arg in ops:
        if op == "advance":
            clock.ms += arg
        elif op == "start":
            await start()
        elif op == "call" and await start() is not None:
            await finish(len(in_flight) - 1, arg)
        elif op == "finish" and in_flight:
            await finish(*arg)
        assert sum(probe for _, probe in in_flight) <= 1


@settings(max_examples=200, deadline=None)
@given(OPS)
# A success sent before the breaker opened arrives while the probe is out: it must not end the probe.
@example(
    [("start", None)]
    + [("call", "transient")] * 3
    + [("advance", 2000), ("start", None)]
    + [("finish", (0, "success")), ("start", None)]
)
def test_random_traffic_never_passes_an_open_breaker_nor_two_probes(ops: list[tuple[str, object]]):
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(scenario(ops))
