"""The full stack: sagas/s and latency at several concurrencies, CPU per saga, RSS, and the ratios
to raw request-reply and to the floor of a saga's messages (`saga_floor.py`), measured in the same run.

    python benchmarks/saga_throughput.py [--orders-per-level N] [--levels 1,16,64,256] [--out DIR]
                                         [--durability nosync|fsync]

Starts its own embedded stack in a temporary OMS_HOME (free ports) and stops it after.
Writes DIR/saga_throughput.json and, when matplotlib is installed, DIR/saga_throughput.png.

The floor is run with the same durability as the stack: with `nosync` (the default here) neither
syncs anything, and both survive any process crash; with `fsync` the floor's nats-server syncs every
JetStream write as OMS's does, and OMS syncs its SQLite commits on top (what that costs is what the
power-loss setting costs, `durability.py`). The four ratios to the floor are printed on a line of their
own and written as `vs_floor`: throughput (best against best), CPU per saga (each at its best level),
p50 with one in flight, and p99 at half OMS's peak against the floor's p99 at that same offered rate.

It then runs the durable floor (`saga_floor.py --durable`: the same messages, and the rows the contract
makes durable before each is sent, in SQLite with a group commit) the same way, and prints OMS against it
and it against the floor: what the durable rows alone cost above the floor, and what OMS adds above them,
per process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import as_admin, embedded_stack, level, pids, restock, rss_bytes, steal_seconds
from rr_baseline import measure as rr_measure
from saga_floor import run_floor

from bus import loop
from cli.loadgen import LoadPlan, run_load


async def half_rate(settings, rate: float, orders: int) -> dict:
    """Latency when the stack is offered half of what it can do (an open-loop fixed rate)."""
    result = await run_load(
        settings, LoadPlan(orders=orders, concurrency=2048, rate=max(rate, 1.0), connections=4, max_seconds=300)
    )
    return {
        "rate": round(rate, 1),
        "achieved": result.to_dict()["sagas_per_s"],
        "latency_ms": result.to_dict()["latency_ms"],
    }


async def run(levels: list[int], orders_per_level: int, durability: str = "nosync") -> dict:
    async with embedded_stack(OMS_DURABILITY=durability) as settings:
        procs = pids(settings)
        rss_before = {name: rss_bytes(pid) for name, pid in procs.items()}
        admin = as_admin(settings)
        url, user, password = settings.resolved_nats_url(), admin.nats_user, admin.nats_password
        steal0 = steal_seconds()
        server_pid = procs.get("nats-server")
        before = await rr_measure(url, 20_000, user, password, server_pid)
        await restock(settings, 500 + sum(max(orders_per_level, c * 20) for c in levels) + 2 * orders_per_level)
        await run_load(settings, LoadPlan(orders=500, concurrency=32))  # warm up
        results = []
        for concurrency in levels:
            orders = max(orders_per_level, concurrency * 20)
            results.append(await level(settings, concurrency, orders))
            r = results[-1]
            print(
                f"  concurrency {concurrency:>4}: {r['sagas_per_s']:>7.0f} sagas/s  "
                f"p50 {r['latency_ms']['p50']:>7.1f} ms  p99 {r['latency_ms']['p99']:>7.1f} ms  "
                f"CPU {r['cpu_us_per_saga']:>6.0f} us/saga",
                flush=True,
            )
        best = max(results, key=lambda r: r["sagas_per_s"])
        half = await half_rate(settings, best["sagas_per_s"] / 2, orders_per_level)
        print(f"  at half the peak rate ({half['rate']:.0f}/s): p99 {half['latency_ms']['p99']:.1f} ms", flush=True)
        rss_after = {name: rss_bytes(pid) for name, pid in pids(settings).items()}
        # The VM's speed drifts: raw request-reply is measured before and after, and the ratio uses the mean.
        after = await rr_measure(url, 20_000, user, password, server_pid)
    baseline = {key: round((before[key] + after[key]) / 2, 1) for key in before}
    # The floor offered the rate OMS was offered at half its peak, for p99 against p99 at the same rate.
    # The stack stopped, as rr ran. Then the durable floor, at the same rate: the part of OMS's cost above
    # the floor that the contract's durable rows make unavoidable, and what is left above it, per process.
    sync = durability == "fsync"
    floor = (await run_floor(10_000, with_rr=False, rates=(half["rate"],), sync_always=sync))["floor"]
    durable = (await run_floor(10_000, with_rr=False, rates=(half["rate"],), sync_always=sync, durable=True))["floor"]
    steal = steal_seconds() - steal0
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
        "durability": durability,
        "baseline": baseline | {"before": before, "after": after},
        "steal_seconds": round(steal, 2),
        "levels": results,
        "best": {
            "concurrency": best["concurrency"],
            "sagas_per_s": best["sagas_per_s"],
            "ratio_to_rr_64": round(best["sagas_per_s"] / baseline["rr_64_per_s"], 4),
        },
        "half_rate": half,
        "floor": floor,
        "durable_floor": durable,
        "vs_floor": vs_floor(results, best, half, floor),
        "vs_durable_floor": vs_floor(results, best, half, durable),
        # The durable floor against the floor, as OMS is held to it: what no implementation keeping the rows
        # can go below (its throughput and CPU at its own best level, p50 at one, p99 at OMS's half-peak rate).
        "durable_vs_floor": floor_vs_floor(durable, floor),
        "rss_bytes": {"before": rss_before, "after": rss_after},
    }


def vs_floor(levels: list[dict], best: dict, half: dict, floor: dict) -> dict[str, float]:
    """The four ratios of issue 18's targets: OMS's figure over the floor's, measured in the same run."""
    floor_best = max(floor["levels"], key=lambda r: r["sagas_per_s"])
    floor_one = next(r for r in floor["levels"] if r["in_flight"] == 1)
    one = next((r for r in levels if r["concurrency"] == 1), None)
    same_rate = floor["open_loop"][0]  # the floor offered OMS's half-peak rate
    return {
        "throughput": round(best["sagas_per_s"] / floor_best["sagas_per_s"], 3),
        "cpu": round(best["cpu_us_per_saga"] / floor_best["cpu_us_per_saga"], 3),
        "p50": round(one["latency_ms"]["p50"] / floor_one["p50_ms"], 3) if one else float("nan"),
        "p99": round(half["latency_ms"]["p99"] / same_rate["p99_ms"], 3),
    }


def floor_vs_floor(durable: dict, floor: dict) -> dict[str, float]:
    """The durable floor's figures over the floor's, measured alike: the four ratios for a design that only
    moves the messages and writes the contract's rows."""

    def figures(f: dict) -> tuple[dict, dict, dict]:
        best = max(f["levels"], key=lambda r: r["sagas_per_s"])
        return best, next(r for r in f["levels"] if r["in_flight"] == 1), f["open_loop"][0]

    (d_best, d_one, d_rate), (f_best, f_one, f_rate) = figures(durable), figures(floor)
    return {
        "throughput": round(d_best["sagas_per_s"] / f_best["sagas_per_s"], 3),
        "cpu": round(d_best["cpu_us_per_saga"] / f_best["cpu_us_per_saga"], 3),
        "p50": round(d_one["p50_ms"] / f_one["p50_ms"], 3),
        "p99": round(d_rate["p99_ms"] / f_rate["p99_ms"], 3),
    }


def chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xs = [r["concurrency"] for r in result["levels"]]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(xs, [r["sagas_per_s"] for r in result["levels"]], "o-", label="sagas/s")
    left.set_xscale("log", base=2)
    left.set_xlabel("orders in flight")
    left.set_ylabel("sagas/s")
    right = left.twinx()
    right.plot(xs, [r["latency_ms"]["p99"] for r in result["levels"]], "s--", color="tab:red", label="p99 ms")
    right.set_ylabel("p99 latency (ms)")
    left.set_title(f"OMS saga throughput (raw request-reply: {result['baseline']['rr_64_per_s']:,.0f}/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,16,64,256")
    parser.add_argument("--orders-per-level", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--durability",
        choices=("nosync", "fsync"),
        default="nosync",
        help="OMS_DURABILITY of the stack; the floor's nats-server syncs its writes too with fsync",
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print(
        f"saga throughput at concurrency {levels} ({args.orders_per_level} orders each), "
        f"OMS_DURABILITY={args.durability}"
    )
    result = loop.run(run(levels, args.orders_per_level, args.durability))  # uvloop when installed
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "saga_throughput.json").write_text(json.dumps(result, indent=2))
    drew = chart(result, args.out / "saga_throughput.png")
    b = result["baseline"]
    print(
        f"raw request-reply: {b['rr_1_per_s']:,.0f}/s (1 in flight), {b['rr_64_per_s']:,.0f}/s (64 in flight); "
        f"before {b['before']['rr_64_per_s']:,.0f}/s, after {b['after']['rr_64_per_s']:,.0f}/s"
    )
    print(f"CPU time stolen by the hypervisor during the run: {result['steal_seconds']:.1f} s")
    best = next(r for r in result["levels"] if r["concurrency"] == result["best"]["concurrency"])
    per_rr = b["cpu_us_per_rr_64"]
    print(
        f"CPU per raw round trip: {per_rr:.0f} us; a saga at the best level costs "
        f"{best['cpu_us_per_saga']:.0f} us = {best['cpu_us_per_saga'] / per_rr:.1f} round trips' worth"
    )
    print(
        f"best: {result['best']['sagas_per_s']:,.0f} sagas/s at concurrency {result['best']['concurrency']} "
        f"= {result['best']['ratio_to_rr_64']:.3f} x raw round trips/s"
    )
    one = result["levels"][0]
    print(f"one in flight: p50 {one['latency_ms']['p50']:.1f} ms; CPU per saga {one['cpu_us_per_saga']:.0f} us")
    floor = result["floor"]
    floor_best = max(floor["levels"], key=lambda r: r["sagas_per_s"])
    floor_one = floor["levels"][0]
    print(
        f"the floor (a saga's messages with no work, saga_floor.py): {floor_best['sagas_per_s']:,.0f} sagas/s "
        f"= {floor_best['sagas_per_s'] / b['rr_64_per_s']:.3f} x raw, {floor_best['cpu_us_per_saga']:.0f} us CPU "
        f"per saga, p50 {floor_one['p50_ms']:.2f} ms at one in flight, p99 {floor['half_rate']['p99_ms']:.1f} ms "
        f"at half its peak"
    )
    same_rate = floor["open_loop"][0]
    print(
        f"the floor at OMS's half-peak rate ({same_rate['rate']:,.0f} sagas/s offered): "
        f"p99 {same_rate['p99_ms']:.1f} ms; "
        f"OMS there: p99 {result['half_rate']['latency_ms']['p99']:.1f} ms"
    )
    v = result["vs_floor"]
    print(
        f"ratio to floor: throughput {v['throughput']:.2f}, CPU {v['cpu']:.2f}, p50 {v['p50']:.2f}, p99 {v['p99']:.2f}"
    )
    durable = result["durable_floor"]
    durable_best = max(durable["levels"], key=lambda r: r["sagas_per_s"])
    print(
        f"the durable floor (the same messages and the contract's rows, saga_floor.py --durable): "
        f"{durable_best['sagas_per_s']:,.0f} sagas/s, {durable_best['cpu_us_per_saga']:.0f} us CPU per saga, "
        f"p50 {durable['levels'][0]['p50_ms']:.2f} ms at one in flight, "
        f"p99 {durable['open_loop'][0]['p99_ms']:.1f} ms at OMS's half-peak rate"
    )
    d = result["durable_vs_floor"]
    print(
        f"durable floor's ratio to floor: throughput {d['throughput']:.2f}, CPU {d['cpu']:.2f}, "
        f"p50 {d['p50']:.2f}, p99 {d['p99']:.2f}"
    )
    dv = result["vs_durable_floor"]
    print(
        f"ratio to durable floor: throughput {dv['throughput']:.2f}, CPU {dv['cpu']:.2f}, p50 {dv['p50']:.2f}, "
        f"p99 {dv['p99']:.2f}"
    )
    by = best["cpu_us_per_saga_by_process"]
    floor_by = floor_best["cpu_us_per_saga_by_process"]
    durable_by = durable_best["cpu_us_per_saga_by_process"]
    print(
        "CPU per saga by process, OMS (durable floor) (floor) at the best levels: "
        + ", ".join(
            f"{name} {by[name]:.0f} ({durable_by.get(name, 0):.0f}) ({floor_by.get(name, 0):.0f}) us"
            for name in sorted(by)
        )
    )
    for name in result["rss_bytes"]["before"]:
        before = result["rss_bytes"]["before"][name] / 2**20
        after = result["rss_bytes"]["after"].get(name, 0) / 2**20
        print(f"RSS {name:<12} {before:6.1f} MiB -> {after:6.1f} MiB")
    print(f"wrote {args.out / 'saga_throughput.json'}" + (f" and {args.out / 'saga_throughput.png'}" if drew else ""))


if __name__ == "__main__":
    main()
