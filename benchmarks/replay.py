"""Replay benchmark: synthetic inventory events straight into a fresh stream, then `rebuild` timed.

Self-contained: starts its own nats-server in a temporary directory, publishes
restocks and reserve/release pairs exactly as the inventory service would
(acknowledged, with `Nats-Msg-Id`), rebuilds the inventory database from them
and checks the result. Not a test; run it with

    python benchmarks/replay.py [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nats

from bus import loop, natsserver
from bus.ids import new_id, now_iso
from bus.replay import rebuild
from bus.settings import Settings
from bus.stream import ensure_stream
from bus.subjects import event_subject
from inventory_svc import store
from inventory_svc.service import SPEC as INVENTORY

SKUS = 100
IN_FLIGHT = 2_000  # unacknowledged publishes at a time
PHASE_TIMEOUT_S = 300.0  # each phase is bounded: a stuck server fails the run instead of hanging it


def events(total: int) -> Iterator[tuple[str, bytes]]:
    """`SKUS` restocks, then reserve/release pairs of one to three lines, up to `total` events."""
    skus = [f"SKU-{n:03d}" for n in range(SKUS)]
    for sku in skus:
        yield _event(store.STOCK_RESTOCKED, sku, None, {"sku": sku, "name": sku, "price_cents": 100, "qty": 10**9})
    for n in range((total - SKUS) // 2):
        order_id = f"ord_{n:012d}"
        items = [{"sku": skus[(n + k) % SKUS], "qty": 1 + k, "unit_price_cents": 100} for k in range(1 + n % 3)]
        reservation = {
            "order_id": order_id,
            "status": "ACTIVE",
            "items": items,
            "total_cents": sum(i["qty"] * 100 for i in items),
            "currency": "USD",
            "created_at": now_iso(),
        }
        yield _event(store.STOCK_RESERVED, order_id, order_id, reservation)
        released = reservation | {"status": "RELEASED", "released_at": now_iso(), "tombstone": False, "reason": None}
        yield _event(store.STOCK_RELEASED, order_id, order_id, released)


def _event(kind: str, key: str, order_id: str | None, data: dict) -> tuple[str, bytes]:
    if kind == store.STOCK_RESTOCKED:
        data = data | {"on_hand": data["qty"]}
    body = {
        "event_id": new_id("evt"),
        "type": kind,
        "occurred_at": now_iso(),
        "service": "inventory",
        "order_id": order_id,
        "saga_id": None,
        "data": data,
    }
    return event_subject("inventory", kind, key), json.dumps(body, separators=(",", ":")).encode()


async def publish(js, settings: Settings, total: int) -> int:
    sent, pending = 0, []
    for subject, body in events(total):
        headers = {"Nats-Msg-Id": json.loads(body)["event_id"]}
        pending.append(await js.publish_async(subject, body, stream=settings.stream_name, headers=headers))
        sent += 1
        if len(pending) >= IN_FLIGHT:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return sent


def check(path: Path, pairs: int) -> str:
    """The rebuilt file holds every reservation, all released, and nothing reserved."""
    conn = sqlite3.connect(path)
    try:
        released = conn.execute("SELECT count(*) FROM reservations WHERE status = 'RELEASED'").fetchone()[0]
        reserved = conn.execute("SELECT coalesce(sum(reserved), 0) FROM products").fetchone()[0]
        products = conn.execute("SELECT count(*) FROM products").fetchone()[0]
    finally:
        conn.close()
    ok = released == pairs and reserved == 0 and products == SKUS
    return "ok" if ok else f"WRONG: {released} released of {pairs}, {reserved} reserved, {products} products"


async def run(total: int) -> None:
    with tempfile.TemporaryDirectory(prefix="oms-replay-bench-") as tmp:
        proc, url = natsserver.start(Path(tmp) / "nats")
        try:
            settings = Settings(home=Path(tmp) / "oms", nats_url=url)
            nc = await nats.connect(url)
            js = nc.jetstream()
            await ensure_stream(nc, js, settings)
            started = time.perf_counter()
            sent = await asyncio.wait_for(publish(js, settings, total), PHASE_TIMEOUT_S)
            published_s = time.perf_counter() - started
            stats = await asyncio.wait_for(rebuild(settings, INVENTORY, js), PHASE_TIMEOUT_S)
            again = await asyncio.wait_for(rebuild(settings, INVENTORY, js), PHASE_TIMEOUT_S)
            path = settings.db_path(INVENTORY.name)
            verdict = check(path, (sent - SKUS) // 2)
            size_mb = path.stat().st_size / 1e6
            await nc.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    rows = [
        ("events in the stream", f"{sent:,}"),
        ("publish (acked)", f"{published_s:.2f} s   {sent / published_s:,.0f} events/s"),
        ("rebuild", f"{stats.seconds:.2f} s   {stats.rate:,.0f} events/s"),
        ("rebuild again", f"{again.seconds:.2f} s   {again.rate:,.0f} events/s"),
        ("database", f"{size_mb:.1f} MB"),
        ("rebuilt state", verdict),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nrecovery by replay: inventory, {stats.applied:,} events applied\n")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="how many events to publish (default 100,000)")
    args = parser.parse_args()
    loop.run(run(max(args.events, SKUS + 2)))  # uvloop when installed, as the services


if __name__ == "__main__":
    main()
