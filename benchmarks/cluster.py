"""The event stream on three nodes against one: sagas/s and p99 of R3 and R1 in the same run, and the stall
a client sees when the node leading the stream is killed.

    python benchmarks/cluster.py [--rounds 3] [--orders 2000] [--concurrency 32] [--rate 100] [--out DIR]

Each round runs the same closed-loop load on a fresh one-server stack (R1) and on a fresh 3-node cluster
(`oms up --cluster 3`, R3), alternating which goes first. Then, on a cluster, orders are offered at a
fixed rate (open loop) and the stream's leader is killed with SIGKILL: the per-second timeline of
confirmed orders, the longest gap without one, and the latency of the orders caught in it.
Every phase ends with the invariant audit. Writes DIR/cluster.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus import auth, loop
from bus.audit import run_audit
from bus.client import Client
from bus.connect import connect
from bus.settings import Settings
from bus.stream import jetstream
from cli import stack
from cli.loadgen import LoadPlan, LoadResult, ensure_stock, run_load


@contextlib.asynccontextmanager
async def throwaway(nodes: int) -> AsyncIterator[Settings]:
    home = Path(tempfile.mkdtemp(prefix=f"oms-bench-r{min(nodes, 3)}-"))
    saved = dict(os.environ)
    os.environ.update({"OMS_HOME": str(home), "OMS_NATS_PORT": "0"})
    os.environ.update({f"OMS_METRICS_PORT_{n}": "0" for n in ("ORDERS", "INVENTORY", "PAYMENT")})
    os.environ.pop("OMS_NATS_URL", None)
    settings = Settings()
    try:
        await stack.up(settings, cluster_size=nodes)
        yield settings
    finally:
        stack.down(settings)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


async def as_admin(settings: Settings):
    return await connect(auth.login(settings, "admin"), "bench-admin", persistent=False)


async def audit_ok(settings: Settings) -> bool:
    nc = await as_admin(settings)
    try:
        js = await jetstream(nc, settings.stream_name)
        report = await run_audit(Client(nc, timeout_s=30), js, settings.stream_name, settings.saga)
        return report.ok
    finally:
        await nc.close()


async def stream_leader(settings: Settings) -> str | None:
    nc = await as_admin(settings)
    try:
        js = await jetstream(nc, settings.stream_name)
        info = await js.stream_info(settings.stream_name)
        return info.cluster.leader if info.cluster else None
    finally:
        await nc.close()


async def closed_loop(nodes: int, orders: int, concurrency: int) -> dict:
    async with throwaway(nodes) as settings:
        nc = await as_admin(settings)
        try:
            await ensure_stock(Client(nc, timeout_s=30), LoadPlan(orders=orders + 300))
        finally:
            await nc.close()
        await run_load(settings, LoadPlan(orders=300, concurrency=concurrency))  # warm up
        result = await run_load(settings, LoadPlan(orders=orders, concurrency=concurrency))
        d = result.to_dict()
        return {
            "replicas": 3 if nodes >= 3 else 1,
            "sagas_per_s": d["sagas_per_s"],
            "p50_ms": d["latency_ms"]["p50"],
            "p99_ms": d["latency_ms"]["p99"],
            "errors": d["errors"],
            "audit_ok": await audit_ok(settings),
        }


async def leader_kill(orders: int, rate: float) -> dict:
    """Orders at `rate`/s; the stream's leader killed a third of the way in."""
    async with throwaway(3) as settings:
        nc = await as_admin(settings)
        try:
            await ensure_stock(Client(nc, timeout_s=30), LoadPlan(orders=orders))
        finally:
            await nc.close()
        leader = await stream_leader(settings)
        done_at: list[float] = []
        killed_at: list[float] = []
        started = time.monotonic()

        def progress(r: LoadResult) -> None:
            done_at.append(time.monotonic() - started)
            if not killed_at and r.completed >= orders // 3 and leader:
                stack.kill(settings, leader, signal.SIGKILL)
                killed_at.append(time.monotonic() - started)

        plan = LoadPlan(orders=orders, concurrency=1024, rate=rate, connections=4, wait_ms=30_000)
        result = await run_load(settings, plan, on_progress=progress)
        new_leader = await stream_leader(settings)
        await stack.up(settings)
        gaps = [b - a for a, b in itertools.pairwise(done_at)]
        per_second: dict[int, int] = {}
        for t in done_at:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        d = result.to_dict()
        return {
            "rate": rate,
            "orders": orders,
            "killed": leader,
            "new_leader": new_leader,
            "killed_at_s": round(killed_at[0], 2) if killed_at else None,
            "longest_gap_without_an_answer_s": round(max(gaps, default=0.0), 3),
            "latency_ms": d["latency_ms"],
            "outcomes": d["outcomes"],
            "errors": d["errors"],
            "answered_per_second": [per_second.get(s, 0) for s in range(int(max(done_at, default=0)) + 1)],
            "audit_ok": await audit_ok(settings),
        }


async def run(rounds: int, orders: int, concurrency: int, rate: float) -> dict:
    closed: list[dict] = []
    for i in range(rounds):
        for nodes in (1, 3) if i % 2 == 0 else (3, 1):
            r = await closed_loop(nodes, orders, concurrency)
            closed.append(r)
            print(
                f"  round {i + 1} R{r['replicas']}: {r['sagas_per_s']:>6.0f} sagas/s  p50 {r['p50_ms']:>6.1f} ms  "
                f"p99 {r['p99_ms']:>7.1f} ms  errors {r['errors'] or 0}  "
                f"audit {'clean' if r['audit_ok'] else 'FAILED'}",
                flush=True,
            )
    summary = {}
    for replicas in (1, 3):
        mine = [r for r in closed if r["replicas"] == replicas]
        summary[f"R{replicas}"] = {
            "sagas_per_s": statistics.median(r["sagas_per_s"] for r in mine),
            "p99_ms": statistics.median(r["p99_ms"] for r in mine),
        }
    ratio = {
        "throughput": round(summary["R3"]["sagas_per_s"] / summary["R1"]["sagas_per_s"], 3),
        "p99": round(summary["R3"]["p99_ms"] / summary["R1"]["p99_ms"], 3),
    }
    print(f"medians: R1 {summary['R1']}  R3 {summary['R3']}")
    print(f"ratio R3/R1: throughput {ratio['throughput']}, p99 {ratio['p99']}")
    kill = await leader_kill(max(orders, int(rate * 30)), rate)
    print(
        f"leader killed at {kill['killed_at_s']} s ({kill['killed']} -> {kill['new_leader']}): longest gap "
        f"{kill['longest_gap_without_an_answer_s']} s, latency {kill['latency_ms']}, errors {kill['errors'] or 0}, "
        f"audit {'clean' if kill['audit_ok'] else 'FAILED'}"
    )
    print(f"answered per second: {kill['answered_per_second']}")
    return {"closed_loop": closed, "medians": summary, "ratio_r3_to_r1": ratio, "leader_kill": kill}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    results = loop.run(run(args.rounds, args.orders, args.concurrency, args.rate))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
