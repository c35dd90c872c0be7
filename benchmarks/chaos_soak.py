"""A soak under faults: orders flow (some shipped, some shipped and returned) while every service errors,
drops replies, lags and is killed.

    python benchmarks/chaos_soak.py [--orders N] [--concurrency C] [--kill-every S] [--max-seconds T]

Bounded in count and time. Prints the orders, outcomes, retries, compensations,
the time to quiesce once the faults stop, and the invariant violations (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import as_admin, embedded_stack

from bus import subjects as s
from bus.audit import run_audit
from bus.client import Client
from bus.connect import connect
from bus.errors import OmsError
from bus.settings import SERVICES
from bus.stream import jetstream
from cli import stack
from cli.loadgen import LoadPlan, Mix, ensure_stock, run_load

FAULTS = {"error_rate": 0.05, "drop_reply_rate": 0.05, "latency_ms": 5, "latency_jitter_ms": 40}
SOAK_ENV = {
    "OMS_SAGA__STEP_TIMEOUT_MS": "500",
    "OMS_SAGA__RETRY_MAX_INTERVAL_MS": "500",
    "OMS_SAGA__RETRY_MAX_ATTEMPTS": "20",
    "OMS_SAGA__DEADLINE_MS": "15000",
    "OMS_BREAKER__TTL_MS": "500",
}


async def set_faults(client: Client, on: bool) -> None:
    for service in SERVICES:
        try:
            subject = f"chaos.{service}.set" if on else f"chaos.{service}.clear"
            await client.request(subject, {**FAULTS, "seed": 7} if on else {}, timeout_s=2)
        except OmsError:
            pass  # a service that is down right now gets its faults on the next round


async def killer(settings, every_s: float, stop: asyncio.Event, client: Client) -> int:
    kills = 0
    for victim in itertools.cycle(SERVICES):
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return kills
        except TimeoutError:
            pass
        if stack.kill(settings, victim, signal.SIGKILL) is not None:
            kills += 1
            print(f"  killed {victim}", flush=True)
        await asyncio.sleep(1.0)
        await stack.up(settings)
        await set_faults(client, True)
    return kills


async def quiesce(client: Client, timeout_s: float) -> float:
    """Until no order is being placed or shipped and no saga (a return's included) runs or compensates."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        unfinished = 0
        for status in ("PENDING", "COMPENSATING", "SHIPPING"):
            found = await client.call(s.ORDERS_LIST, {"status": status, "limit": 1000})
            unfinished += len(found["orders"])
        for status in ("RUNNING", "COMPENSATING"):
            found = await client.call(s.SAGA_LIST, {"status": status, "limit": 1000})
            unfinished += len(found["sagas"])
        if not unfinished:
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise TimeoutError(f"orders still unfinished after {timeout_s}s")


async def soak(orders: int, concurrency: int, kill_every_s: float, max_seconds: float) -> dict:
    async with embedded_stack(**SOAK_ENV) as settings:
        nc = await connect(as_admin(settings), "soak", persistent=False)
        client = Client(nc, timeout_s=10)
        plan = LoadPlan(
            orders=orders,
            concurrency=concurrency,
            mix=Mix(declined=0.1, out_of_stock=0.05, shipped=0.2, returned=0.1),
            max_seconds=max_seconds,
            wait_ms=2000,
        )
        await ensure_stock(client, plan)  # before the faults: only the mix's out-of-stock orders run out
        await set_faults(client, True)
        stop = asyncio.Event()
        kills = asyncio.create_task(killer(settings, kill_every_s, stop, client))
        result = await run_load(settings, plan)
        stop.set()
        killed = await kills
        await stack.up(settings)
        await set_faults(client, False)
        took = await quiesce(client, 120)
        js = await jetstream(nc, settings.stream_name)  # admin reaches the stream under JS.OMS.API
        report = await run_audit(client, js, settings.stream_name, settings.saga)
        health = await client.call(s.ORDERS_HEALTH, {})
        by_status = {}
        for status in ("CONFIRMED", "FAILED", "CANCELLED", "SHIPPED", "PARTIALLY_RETURNED", "RETURNED"):
            found = await client.call(s.ORDERS_LIST, {"status": status, "limit": 1000})
            by_status[status] = len(found["orders"])
        await nc.close()
    return {
        "orders_sent": result.sent,
        "client_saw": dict(result.outcomes),
        "client_errors": dict(result.errors),
        "kills": killed,
        "final_status_counts_upto_1000_each": by_status,
        "retries_since_last_order_restart": health.get("counts", {}).get("retries", 0),
        "compensations_since_last_order_restart": health.get("counts", {}).get("compensations", 0),
        "seconds_to_quiesce": round(took, 2),
        "audit": report.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()
    summary = asyncio.run(soak(args.orders, args.concurrency, args.kill_every, args.max_seconds))
    print(json.dumps(summary, indent=2))
    violations = summary["audit"]["violations"]
    print(f"invariant violations: {violations}")
    sys.exit(1 if violations else 0)


if __name__ == "__main__":
    main()
