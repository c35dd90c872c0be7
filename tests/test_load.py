"""`oms load` and its generator: the mix, its flag, a run against the real services, the counts it reports."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from bus.audit import run_audit
from bus.settings import Settings
from cli.app import app
from cli.failures import ExitCode
from cli.loadgen import LoadPlan, Mix, counted_during, ensure_stock, run_load

runner = CliRunner()
shares = st.floats(min_value=0, max_value=1, allow_nan=False)


@given(declined=shares, out_of_stock=shares)
def test_a_mix_of_two_shares_parses_or_is_refused_for_their_sum(declined: float, out_of_stock: float):
    text = f"declined={declined!r},out_of_stock={out_of_stock!r}"
    if declined + out_of_stock <= 1:
        assert Mix.parse(text) == Mix(declined=declined, out_of_stock=out_of_stock)
    else:
        with pytest.raises(ValueError, match="must not exceed 1"):
            Mix.parse(text)


@given(st.text(max_size=40))
def test_any_mix_text_parses_or_is_refused_with_a_value_error(text: str):
    try:
        mix = Mix.parse(text)
    except ValueError as exc:
        assert str(exc)  # says what is wrong
    else:
        assert 0 <= mix.declined and 0 <= mix.out_of_stock and mix.declined + mix.out_of_stock <= 1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("declined=2", "between 0 and 1"),
        ("declined=-0.1", "between 0 and 1"),
        ("declined=x", "'x' is not a number"),
        ("refunded=0.1", "expected one of declined=F, out_of_stock=F, shipped=F, returned=F"),
        ("declined", "expected one of declined=F, out_of_stock=F, shipped=F, returned=F"),
        ("declined=0.7,out_of_stock=0.5", "must not exceed 1"),
    ],
)
def test_oms_load_refuses_a_bad_mix_before_it_connects_to_anything(tmp_path, text: str, says: str):
    # No server listens on this URL: a refusal that came from anywhere but the flag would say so.
    env = {"OMS_HOME": str(tmp_path), "OMS_NATS_URL": "nats://127.0.0.1:1", "COLUMNS": "200"}
    result = runner.invoke(app, ["load", "--mix", text, "--orders", "5"], env=env)
    assert result.exit_code == ExitCode.USAGE
    assert "--mix" in result.output and says in result.output


def test_the_counts_of_a_run_restart_with_the_order_service():
    before = {"started_at": "t1", "retries": 5, "compensations": 2}
    assert counted_during(before, {"started_at": "t1", "retries": 9, "compensations": 2}) == (
        {"retries": 4, "compensations": 0},
        False,
    )
    # Restarted during the run: its counters began again, so they are the run's since then.
    assert counted_during(before, {"started_at": "t2", "retries": 1, "compensations": 3}) == (
        {"retries": 1, "compensations": 3},
        True,
    )
    assert counted_during(before, {}) == ({"retries": 0, "compensations": 0}, False)  # not known at the end


async def test_a_mixed_run_ends_as_drawn_and_counts_its_compensations(stack: dict[str, Any], settings: Settings):
    plan = LoadPlan(orders=60, concurrency=8, mix=Mix(declined=0.3, out_of_stock=0.2), seed=11, wait_ms=15_000)
    await ensure_stock(stack["client"], plan)
    result = await run_load(settings, plan)
    kinds = result.by_kind
    assert sum(kinds.values()) == 60 and all(kinds[k] for k in ("ok", "declined", "out_of_stock"))
    assert result.outcomes == {"CONFIRMED": kinds["ok"], "FAILED": kinds["declined"] + kinds["out_of_stock"]}
    assert result.errors == {} and len(result.latencies_s) == 60
    # A declined payment releases its reservation; an order out of stock reserved nothing to give back.
    # (A step retried after a timeout is compensated too when its saga fails: a slow machine may add some.)
    counts = result.saga_counts
    assert counts["compensations"] >= kinds["declined"]
    assert counts["compensations"] == kinds["declined"] or counts["retries"] > 0
    assert not result.counts_since_restart
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    assert report.ok, report.to_dict()


async def test_a_run_with_shipped_and_returned_shares_ships_and_returns_them(stack: dict[str, Any], settings: Settings):
    mix = Mix(declined=0.1, shipped=0.3, returned=0.2)
    plan = LoadPlan(orders=40, concurrency=8, mix=mix, seed=5, wait_ms=15_000)
    await ensure_stock(stack["client"], plan)
    result = await run_load(settings, plan)
    kinds = result.by_kind
    assert sum(kinds.values()) == 40 and all(kinds[k] for k in ("ok", "declined", "shipped", "returned")), kinds
    assert result.errors == {}, result.errors
    assert result.outcomes == {
        "CONFIRMED": kinds["ok"],
        "FAILED": kinds["declined"],
        "SHIPPED": kinds["shipped"],
        "RETURNED": kinds["returned"],
    }
    report = await run_audit(stack["client"], stack["js"], settings.stream_name, settings.saga)
    assert report.ok, report.to_dict()


async def test_a_run_at_a_fixed_rate_keeps_to_its_schedule(stack: dict[str, Any], settings: Settings):
    plan = LoadPlan(orders=30, concurrency=64, rate=150.0, seed=random.randrange(1 << 30))
    await ensure_stock(stack["client"], plan)
    result = await run_load(settings, plan)
    assert result.outcomes == {"CONFIRMED": 30}
    # The last order may not leave before its slot, 29/150 s after the first: an open loop, not a burst.
    assert result.seconds >= 29 / 150


async def test_a_runs_start_and_end_hooks_frame_its_orders_alone(stack: dict[str, Any], settings: Settings):
    """A benchmark counts CPU between the hooks: the first is called connected and before any order leaves,
    the second once every order is answered."""
    plan = LoadPlan(orders=12, concurrency=4, connections=2)
    await ensure_stock(stack["client"], plan)
    seen: list[tuple[str, int, int]] = []
    holder: list[Any] = []

    def on_progress(result: Any) -> None:
        holder[:] = [result]

    result = await run_load(
        settings,
        plan,
        on_progress=on_progress,
        on_start=lambda: seen.append(("start", len(holder), 0)),
        on_end=lambda: seen.append(("end", holder[0].sent, holder[0].completed)),
    )
    assert seen == [("start", 0, 0), ("end", 12, 12)]
    assert result.completed == 12
