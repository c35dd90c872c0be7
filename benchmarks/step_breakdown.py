"""Where a saga's time goes, from the saga records of orders placed at a given concurrency.

    python benchmarks/step_breakdown.py [--orders N] [--concurrency C]

For each step: `request` is the participant round trip measured by the engine
(the participant's own commit and event publish are inside it); `record` is the
rest of the step's time (persisting its start and outcome, scheduling; for the
first step also the order's creation reaching JetStream, which a saga waits for
before it sends anything). Before
the first step is the wait for a saga slot; after the last one, the client
waits for the order's events to be acknowledged and for the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import as_admin, embedded_stack, restock

from bus import subjects as s
from bus.client import Client
from bus.connect import connect
from bus.ids import parse_iso


async def run(orders: int, concurrency: int) -> dict[str, list[float]]:
    phases: dict[str, list[float]] = {}
    async with embedded_stack() as settings:
        await restock(settings, orders, ("CB-505",))
        nc = await connect(as_admin(settings), "bench", persistent=False)
        client = Client(nc, timeout_s=30)
        slots = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with slots:
                body = {"customer_id": f"b{i}", "items": [{"sku": "CB-505", "qty": 1}]}
                t0 = time.perf_counter()
                placed = await client.call(s.ORDERS_PLACE, body, idempotency_key=f"bd-{i}")
                latency_ms = (time.perf_counter() - t0) * 1000
            order = await client.call(s.ORDERS_GET, {"order_id": placed["order_id"]})
            created = parse_iso(order["created_at"])
            steps = {st["step"]: st for st in order["saga"]["steps"] if st["action"] == "invoke"}
            first = steps["reserve_stock"]
            phases.setdefault("queue (created -> first step)", []).append(
                (parse_iso(first["started_at"]) - created) * 1000
            )
            for name, st in steps.items():
                took = (parse_iso(st["finished_at"]) - parse_iso(st["started_at"])) * 1000
                request = st["duration_ms"] or 0.0
                phases.setdefault(f"{name}: request", []).append(request)
                phases.setdefault(f"{name}: record", []).append(max(0.0, took - request))
            last = parse_iso(order["updated_at"])
            phases.setdefault("saga (created -> confirmed)", []).append((last - created) * 1000)
            phases.setdefault("client latency", []).append(latency_ms)

        await asyncio.gather(*(one(i) for i in range(orders)))
        await nc.close()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    phases = asyncio.run(run(args.orders, args.concurrency))
    print(f"{args.orders} orders at concurrency {args.concurrency} (milliseconds)")
    print(f"{'phase':<36} {'p50':>8} {'p90':>8} {'mean':>8}")
    for name, values in phases.items():
        values.sort()
        p50 = values[len(values) // 2]
        p90 = values[int(len(values) * 0.9)]
        print(f"{name:<36} {p50:>8.2f} {p90:>8.2f} {statistics.fmean(values):>8.2f}")


if __name__ == "__main__":
    main()
