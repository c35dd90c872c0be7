"""The console's own footprint: how long its pages take as the stack's history grows, and whether its live
feeds keep up while `oms load` drives the stack at its peak.

    python benchmarks/console.py [--orders 100000] [--checkpoints 1000,10000,100000] [--out DIR]

Starts an embedded stack (one server) in a temporary OMS_HOME and the console in-process (Starlette's
test client: the app itself, no HTTP stack), places orders with `oms load` up to each checkpoint and times
each page there (median and max of 20 gets). During the last load it follows `/live/services` and
`/live/orders` and reports how often their events came (they should come about every second) and the
throughput the console's chart drew against what the load measured. Writes DIR/console.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import embedded_stack, restock

from bus import auth, loop
from cli.console.app import create_app
from cli.loadgen import LoadPlan, run_load

PAGES = ("/orders", "/orders?status=CONFIRMED", "/orders/{order}", "/stock", "/services", "/sagas")


def time_pages(client, order_id: str, rounds: int = 20) -> dict[str, dict[str, float]]:
    timings: dict[str, dict[str, float]] = {}
    for page in PAGES:
        path = page.format(order=order_id)
        took = []
        for _ in range(rounds):
            started = time.perf_counter()
            response = client.get(path)
            took.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        timings[page] = {"median_ms": round(statistics.median(took), 2), "max_ms": round(max(took), 2)}
    return timings


def follow(client, path: str, stop: threading.Event, arrivals: list[float]) -> None:
    with client.stream("GET", path) as feed:
        in_event = False
        for line in feed.iter_lines():
            if line.startswith("data:"):
                in_event = True
            elif not line.strip() and in_event:  # a blank line ends an event
                arrivals.append(time.monotonic())
                in_event = False
            if stop.is_set():
                return


def gaps(arrivals: list[float]) -> dict[str, float]:
    between = [b - a for a, b in itertools.pairwise(arrivals)]
    if not between:
        return {"events": len(arrivals)}
    return {
        "events": len(arrivals),
        "median_gap_s": round(statistics.median(between), 3),
        "max_gap_s": round(max(between), 3),
    }


async def run(orders: int, checkpoints: list[int]) -> dict:
    from starlette.testclient import TestClient

    async with embedded_stack() as settings:
        await restock(settings, orders + 1000)
        results: dict = {"checkpoints": []}
        placed = 0
        app = create_app(settings)
        with TestClient(app, base_url="http://127.0.0.1:8089") as client:
            creds = auth.load(settings, "admin")
            assert creds is not None
            page = client.get("/orders").text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            client.post("/signin", data={"csrf": csrf, "user": "admin", "password": creds.password})
            for mark in checkpoints:
                last = mark == checkpoints[-1]
                stop = threading.Event()
                arrivals: dict[str, list[float]] = {"/live/services": [], "/live/orders": []}
                followers = (
                    [
                        threading.Thread(target=follow, args=(client, p, stop, arrivals[p]), daemon=True)
                        for p in arrivals
                    ]
                    if last
                    else []
                )
                for t in followers:
                    t.start()
                result = await run_load(settings, LoadPlan(orders=mark - placed, concurrency=128, connections=4))
                stop.set()
                placed = mark
                newest = client.get("/orders?limit=1").text.split('data-order="', 1)[1].split('"', 1)[0]
                entry = {"orders": placed, "pages": await asyncio.to_thread(time_pages, client, newest)}
                if last:
                    samples = list(app.state.console.watch.samples)
                    busy = [smp.ended for smp in samples if smp.ended]
                    entry["load_sagas_per_s"] = result.to_dict()["sagas_per_s"]
                    entry["chart_median_per_s"] = statistics.median(busy) if busy else 0
                    entry["feeds"] = {p: gaps(a) for p, a in arrivals.items()}
                results["checkpoints"].append(entry)
                print(json.dumps(entry), flush=True)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--checkpoints", default="1000,10000,100000")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    checkpoints = sorted(min(int(c), args.orders) for c in args.checkpoints.split(","))
    results = loop.run(run(args.orders, checkpoints))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "console.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
