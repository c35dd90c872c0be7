"""What keeping events once costs: a relay's lookup of its outbox at start, and the audit's duplicate check.

Self-contained: starts its own nats-server in a temporary directory and
publishes a stream of synthetic events of the three services (as their relays
would: acknowledged, with `Nats-Msg-Id`), four per order as on the happy path,
plus repeats that are legitimate (restocks of a SKU, two compensations for some
orders). Then:

- the relay's lookup: an inventory outbox of N rows that are all in the stream
  (a relay killed between their ack and their delete), from its floor (the
  usual case) and without one (a file from before the floor: the whole of the
  service's events is read); timed from `Relay.start` until nothing is pending;
- the audit's check of invariant 6: the per-subject count (`stream_subjects`)
  and the reading of subjects counted more than once (`repeated_events`), on a
  clean stream and with copies of 100 events added.

Not a test; run it with

    python benchmarks/duplicates.py [--orders 25000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import nats

from bus import loop, natsserver
from bus.audit import repeated_events, stream_subjects
from bus.db import Database
from bus.ids import new_id, now_iso
from bus.outbox import Relay, set_outbox_floor
from bus.settings import Settings
from bus.stream import ensure_stream
from bus.subjects import event_subject
from inventory_svc.service import SPEC as INVENTORY

IN_FLIGHT = 2_000
SKUS = 50
OUTBOX_SIZES = (10, 256, 5_000)
PHASE_TIMEOUT_S = 300.0


def body(service: str, kind: str, order_id: str | None) -> bytes:
    event = {
        "event_id": new_id("evt"),
        "type": kind,
        "occurred_at": now_iso(),
        "service": service,
        "order_id": order_id,
        "saga_id": None,
        "data": {"order_id": order_id},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def history(orders: int) -> list[tuple[str, bytes]]:
    """Restocks (each SKU three times), then per order its four happy-path events in the order the services
    publish them; one order in twenty also has two compensations."""
    out = [
        (event_subject("inventory", "stock_restocked", f"SKU-{n % SKUS}"), body("inventory", "stock_restocked", None))
        for n in range(3 * SKUS)
    ]
    for n in range(orders):
        oid = f"ord_{n:012d}"
        for service, kind in (
            ("orders", "order_created"),
            ("inventory", "stock_reserved"),
            ("payment", "payment_authorized"),
            ("orders", "order_confirmed"),
        ):
            out.append((event_subject(service, kind, oid), body(service, kind, oid)))
        if n % 20 == 0:
            subject = event_subject("orders", "step_compensated", oid)
            out += [(subject, body("orders", "step_compensated", oid)) for _ in range(2)]
    return out


async def publish(js, stream: str, events: list[tuple[str, bytes]]) -> list[int]:
    """Publish with Nats-Msg-Id; returns each event's stream sequence."""
    seqs: list[int] = []
    for start in range(0, len(events), IN_FLIGHT):
        pending = [
            await js.publish_async(subject, data, stream=stream, headers={"Nats-Msg-Id": json.loads(data)["event_id"]})
            for subject, data in events[start : start + IN_FLIGHT]
        ]
        seqs += [ack.seq for ack in await asyncio.gather(*pending)]
    return seqs


async def lookup(
    settings: Settings, js, rows: list[tuple[str, bytes]], floor: int | None, tmp: Path
) -> tuple[float, int]:
    """An inventory outbox holding `rows` (all in the stream), a relay started on it: seconds until nothing
    is pending, and how many stream messages the lookup read."""
    async with Database(tmp / f"lookup-{new_id('db')}.db", "inventory", INVENTORY.schema) as db:

        def fill(tx) -> None:
            tx.executemany(
                "INSERT INTO outbox (event_id, subject, body) VALUES (?, ?, ?)",
                [(json.loads(data)["event_id"], subject, data) for subject, data in rows],
            )
            if floor is not None:
                set_outbox_floor(tx, floor)

        await db.commit(fill)
        started = time.perf_counter()
        relay = Relay(js, db, settings.stream_name)
        await relay.start()
        assert await relay.drain(PHASE_TIMEOUT_S)
        took = time.perf_counter() - started
        await relay.stop()
        assert relay.found_stored == len(rows) and relay.published_total == 0, "the lookup missed rows"
        return took, relay.lookup.read if relay.lookup else 0


async def audit_check(js, stream: str) -> tuple[float, float, int, int]:
    started = time.perf_counter()
    counts = await stream_subjects(js, stream)
    counted = time.perf_counter()
    found = await repeated_events(js, stream, counts)
    return counted - started, time.perf_counter() - counted, sum(n for n in counts.values() if n > 1), len(found)


async def measure(settings: Settings, js, orders: int, tmp: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    events = history(orders)
    started = time.perf_counter()
    seqs = await asyncio.wait_for(publish(js, settings.stream_name, events), PHASE_TIMEOUT_S)
    rows.append(("events in the stream", f"{len(events):,}, published in {time.perf_counter() - started:.1f} s"))
    inventory = [(i, e) for i, e in enumerate(events) if e[0].startswith("events.inventory.")]
    rows.append(("of them inventory's", f"{len(inventory):,}"))
    for n in OUTBOX_SIZES:
        tail = inventory[-n:]
        floor = seqs[tail[0][0]] - 1  # where the last delete before them left the floor
        took, read = await lookup(settings, js, [e for _, e in tail], floor, tmp)
        rows.append((f"lookup of {n:,} rows from the floor", f"{took * 1000:8.1f} ms   {read:,} messages read"))
    took, read = await lookup(settings, js, [e for _, e in inventory[-256:]], None, tmp)
    rows.append(("lookup of 256 rows, no floor", f"{took * 1000:8.1f} ms   {read:,} messages read"))

    for label in ("audit, clean stream", "audit, 100 copies added"):
        if label.endswith("added"):  # stored again, as after an outage longer than the window
            for subject, data in events[:: max(1, len(events) // 100)][:100]:
                await js.publish(subject, data, stream=settings.stream_name)
        counting, reading, repeats, found = await audit_check(js, settings.stream_name)
        rows.append((f"{label}: count per subject", f"{counting * 1000:8.1f} ms"))
        rows.append((f"{label}: read repeats", f"{reading * 1000:8.1f} ms   {repeats:,} messages, {found} found"))
    return rows


async def run(orders: int) -> None:
    with tempfile.TemporaryDirectory(prefix="oms-duplicates-bench-") as tmp:
        proc, url = natsserver.start(Path(tmp) / "nats")
        try:
            settings = Settings(home=Path(tmp) / "oms", nats_url=url)
            nc = await nats.connect(url)
            await ensure_stream(nc, nc.jetstream(), settings)
            rows = await measure(settings, nc.jetstream(), orders, Path(tmp))
            await nc.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    width = max(len(name) for name, _ in rows)
    print(f"\nduplicates: {orders:,} orders\n")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=25_000, help="orders in the stream (4 events each)")
    args = parser.parse_args()
    loop.run(run(args.orders))  # uvloop when installed, as the services


if __name__ == "__main__":
    main()
