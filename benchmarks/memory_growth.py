"""Memory with history: each process's RSS after 10,000 orders and after 100,000 (no growth expected).

python benchmarks/memory_growth.py [--first N] [--total N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import embedded_stack, pids, restock, rss_bytes

from cli.loadgen import LoadPlan, run_load


async def measure(first: int, total: int, concurrency: int) -> None:
    async with embedded_stack() as settings:
        await restock(settings, total + 1000)
        await run_load(settings, LoadPlan(orders=first, concurrency=concurrency, max_seconds=3600))
        before = {name: rss_bytes(pid) for name, pid in pids(settings).items()}
        started = time.monotonic()
        result = await run_load(settings, LoadPlan(orders=total - first, concurrency=concurrency, max_seconds=7200))
        took = time.monotonic() - started
        after = {name: rss_bytes(pid) for name, pid in pids(settings).items()}
    print(f"{total - first} more orders in {took:.0f}s ({result.rate:.0f} sagas/s): {dict(result.outcomes)}")
    print(f"{'process':<12} {'after ' + str(first):>14} {'after ' + str(total):>14} {'growth':>8}")
    for name in before:
        growth = (after[name] / before[name] - 1) * 100
        print(f"{name:<12} {before[name] / 2**20:>11.1f} MiB {after[name] / 2**20:>11.1f} MiB {growth:>+7.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=10_000)
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    asyncio.run(measure(args.first, args.total, args.concurrency))


if __name__ == "__main__":
    main()
