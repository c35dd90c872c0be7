"""A/B: the working tree against a git revision, in alternating rounds on the same machine.

    python benchmarks/compare.py [--base REV] [--rounds N] [--orders N] [--concurrency C]

This machine's speed drifts by a fifth or more within minutes, so one run of each build says
little. Each round runs the base revision, then the working tree, one after the other (each with
a fresh embedded stack); the table shows every round and the medians. The base is checked out in a
temporary git worktree and run with its own packages on PYTHONPATH (services included), driven by
this tree's benchmark code: compare revisions whose `cli.stack` and `cli.loadgen` agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ONE_RUN = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from _stack import embedded_stack, level, restock
from cli.loadgen import LoadPlan, run_load
try:
    from uvloop import run  # as the services, when installed
except ImportError:
    from asyncio import run

async def main(concurrency, orders):
    async with embedded_stack() as settings:
        await restock(settings, orders + 1000)
        await run_load(settings, LoadPlan(orders=500, concurrency=32))  # warm up
        print(json.dumps(await level(settings, concurrency, orders)))

run(main(int(sys.argv[2]), int(sys.argv[3])))
"""


def run_once(tree: Path, concurrency: int, orders: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, "-c", ONE_RUN, str(HERE), str(concurrency), str(orders)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the revision to compare against (default HEAD)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oms-compare-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base], check=True)
        try:
            rows = []
            for i in range(1, args.rounds + 1):
                a = run_once(base, args.concurrency, args.orders)
                b = run_once(ROOT, args.concurrency, args.orders)
                rows.append((a, b))
                print(
                    f"round {i}: base {a['sagas_per_s']:>6.0f} sagas/s {a['cpu_us_per_saga']:>6.0f} us/saga"
                    f"   work {b['sagas_per_s']:>6.0f} sagas/s {b['cpu_us_per_saga']:>6.0f} us/saga",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    for label, key in (("sagas/s", "sagas_per_s"), ("CPU us per saga", "cpu_us_per_saga")):
        a = statistics.median(r[0][key] for r in rows)
        b = statistics.median(r[1][key] for r in rows)
        print(f"median {label:<16} base {a:>8.0f}   work {b:>8.0f}   work/base {b / a:.3f}")
    p99 = [(r[0]["latency_ms"]["p99"], r[1]["latency_ms"]["p99"]) for r in rows]
    a, b = statistics.median(x for x, _ in p99), statistics.median(y for _, y in p99)
    print(f"median {'p99 ms':<16} base {a:>8.1f}   work {b:>8.1f}   work/base {b / a:.3f}")


if __name__ == "__main__":
    main()
