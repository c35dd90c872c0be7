"""Durability's cost: OMS_DURABILITY=fsync (the default) against nosync, in alternating rounds of one run.

    python benchmarks/durability.py [--rounds 3] [--levels 1,16,64] [--orders-per-level 1500] [--out DIR]

fsync: SQLite `synchronous=FULL` on every group commit, nats-server `sync_interval: always` (every
JetStream write on disk before its acknowledgement); nosync: `synchronous=NORMAL` and nats-server's own
background sync. `oms up` reads the setting at start, for the server's configuration and the services
alike, so each mode gets a fresh embedded stack (the script checks the server's configuration says so).

Each round runs both modes one after the other, the order swapping from round to round, so that the
machine's drift hits both alike. At each level: sagas/s, CPU per saga over every process (services and
nats-server), p50 and p99. Prints every round, the medians per mode and the ratios fsync/nosync, and what
one fsync costs on the disk OMS_HOME lives on (a 4 KiB append, then fsync), before and after. Writes
DIR/durability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import embedded_stack, level, restock, steal_seconds

from bus import loop
from cli.loadgen import LoadPlan, run_load

MODES = ("fsync", "nosync")


def fsync_latency(folder: Path, count: int = 1000) -> dict[str, float]:
    """What one fsync costs on `folder`'s disk: a 4 KiB append then fsync, `count` times (microseconds)."""
    path = folder / f".fsync-probe-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    took = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    took.sort()
    return {
        "p50_us": round(took[len(took) // 2] * 1e6),
        "p99_us": round(took[int(0.99 * (len(took) - 1))] * 1e6),
        "mean_us": round(statistics.fmean(took) * 1e6),
    }


async def one_mode(mode: str, levels: list[int], orders_per_level: int) -> list[dict]:
    async with embedded_stack(OMS_DURABILITY=mode) as settings:
        conf = (settings.home / "nats.conf").read_text()
        assert ("sync_interval: always" in conf) == (mode == "fsync"), f"nats.conf does not follow {mode}"
        sizes = [orders(c, orders_per_level) for c in levels]
        await restock(settings, 300 + sum(sizes))
        await run_load(settings, LoadPlan(orders=300, concurrency=16))  # warm up
        return [await level(settings, c, n) for c, n in zip(levels, sizes, strict=True)]


def orders(concurrency: int, per_level: int) -> int:
    """Orders at one level: fewer with one in flight (slow), enough for p99 at every level."""
    return max(per_level // 3 if concurrency == 1 else per_level, concurrency * 20, 200)


def medians(rounds: list[dict], mode: str, levels: list[int]) -> list[dict]:
    found = []
    for i, concurrency in enumerate(levels):
        runs = [r[mode][i] for r in rounds]
        found.append(
            {
                "concurrency": concurrency,
                "sagas_per_s": statistics.median(r["sagas_per_s"] for r in runs),
                "cpu_us_per_saga": statistics.median(r["cpu_us_per_saga"] for r in runs),
                "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in runs),
                "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in runs),
                "cpu_us_by_process": {
                    name: statistics.median(r["cpu_us_per_saga_by_process"].get(name, 0.0) for r in runs)
                    for name in runs[0]["cpu_us_per_saga_by_process"]
                },
                "failed_or_unanswered": sum(sum(r["errors"].values()) for r in runs)
                + sum(n for r in runs for k, n in r["outcomes"].items() if k != "CONFIRMED"),
            }
        )
    return found


async def run(rounds: int, levels: list[int], orders_per_level: int) -> dict:
    home_disk = Path(tempfile.gettempdir())  # embedded_stack makes OMS_HOME there
    disk_before = fsync_latency(home_disk)
    steal0 = steal_seconds()
    results = []
    for r in range(rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        row = {}
        for mode in order:
            row[mode] = await one_mode(mode, levels, orders_per_level)
            line = "  ".join(
                f"c={x['concurrency']}: {x['sagas_per_s']:6.0f}/s {x['cpu_us_per_saga']:6.0f} us "
                f"p99 {x['latency_ms']['p99']:6.1f} ms"
                for x in row[mode]
            )
            print(f"round {r + 1} {mode:<6}  {line}", flush=True)
        results.append(row)
    summary = {mode: medians(results, mode, levels) for mode in MODES}
    ratios = [
        {
            "concurrency": f["concurrency"],
            "sagas_per_s": round(f["sagas_per_s"] / n["sagas_per_s"], 3),
            "cpu_us_per_saga": round(f["cpu_us_per_saga"] / n["cpu_us_per_saga"], 3),
            "p50_ms": round(f["p50_ms"] / n["p50_ms"], 3),
            "p99_ms": round(f["p99_ms"] / n["p99_ms"], 3),
        }
        for f, n in zip(summary["fsync"], summary["nosync"], strict=True)
    ]
    return {
        "rounds": results,
        "medians": summary,
        "fsync_over_nosync": ratios,
        "disk": {"folder": str(home_disk), "fsync_before": disk_before, "fsync_after": fsync_latency(home_disk)},
        "steal_seconds": round(steal_seconds() - steal0, 2),
    }


def report(result: dict) -> None:
    print(f"\nmedians of {len(result['rounds'])} rounds (CPU per saga: every process of the stack)")
    print(f"  {'mode':<7} {'in flight':>9} {'sagas/s':>8} {'CPU/saga':>10} {'p50':>9} {'p99':>9}")
    for mode in MODES:
        for x in result["medians"][mode]:
            print(
                f"  {mode:<7} {x['concurrency']:>9} {x['sagas_per_s']:>8.0f} {x['cpu_us_per_saga']:>7.0f} us "
                f"{x['p50_ms']:>6.1f} ms {x['p99_ms']:>6.1f} ms"
            )
    print("\nfsync / nosync")
    for x in result["fsync_over_nosync"]:
        print(
            f"  {x['concurrency']:>3} in flight: sagas/s {x['sagas_per_s']:.2f} x, "
            f"CPU per saga {x['cpu_us_per_saga']:.2f} x, p50 {x['p50_ms']:.2f} x, p99 {x['p99_ms']:.2f} x"
        )
    disk = result["disk"]
    print(
        f"\none fsync of a 4 KiB append on {disk['folder']}: p50 {disk['fsync_before']['p50_us']} us, "
        f"p99 {disk['fsync_before']['p99_us']} us before; p50 {disk['fsync_after']['p50_us']} us, "
        f"p99 {disk['fsync_after']['p99_us']} us after"
    )
    print(f"CPU time stolen by the hypervisor during the run: {result['steal_seconds']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--orders-per-level", type=int, default=1500, help="a third of it with one in flight")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print(f"durability: fsync against nosync, {args.rounds} alternating rounds at {levels} in flight")
    result = loop.run(run(args.rounds, levels, args.orders_per_level))  # uvloop when installed, as the services
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "durability.json").write_text(json.dumps(result, indent=2))
    report(result)
    print(f"wrote {args.out / 'durability.json'}")


if __name__ == "__main__":
    main()
