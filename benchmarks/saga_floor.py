"""The floor a saga's messages set on this machine: the same messages as OMS sends, with no work.

    python benchmarks/saga_floor.py [--sagas N] [--rates R,R] [--sync-always] [--durable] [--json]

A saga in OMS is three request-replies and four JetStream publishes whose acknowledgements the
replies wait for (design decision 10). This benchmark sends exactly those messages, in the same
order, between the same number of processes, with handlers that do nothing else: no validation,
no database, no logging. It starts its own nats-server with a JetStream stream like OMS_EVENTS.

    client --place--> orders: publish "created" (no wait) --reserve--> inventory: publish, await ack, reply
                              --authorize--> payment: publish, await ack, reply
                              publish "confirmed", await both acks, reply --> client

What it prints is what no implementation of this design, in Python on nats-py, can go below on
this machine: sagas/s, CPU per saga over every process, latency at one in flight. It also runs raw
request-reply in the same run (`rr_baseline.py`), so the floor reads as a ratio.

`--durable` runs the durable floor instead: the same processes and messages, and in each handler the
rows the contract makes durable before the message that depends on them is sent (the order, its key,
the saga and its step results, each participant's key with its reply and its own row, an outbox row per
event), in SQLite with one group commit per turn of the loop as OMS does (`DURABLE_ROLE` below). Its
orders process also waits for "created" to be in the stream before it calls anyone, as OMS must (design
decision 10). What it costs above the floor is what keeping those rows costs any implementation in
Python here; what OMS costs above it is OMS's own (validation, the saga engine, logs, metrics, breakers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from pathlib import Path

import nats
from _stack import cpu_seconds
from nats.js import api as js_api
from rr_baseline import measure as rr_measure

from bus import loop, natsserver

STREAM = "FLOOR_EVENTS"

# The end of both roles: a task per request, the subscription, "ready" on stdout, then serve until killed.
SERVE = """
    handler = orders if role == "orders" else participant
    async def spawn(msg):  # subscription callbacks run one at a time: a task per request, as the services do
        task = asyncio.create_task(handler(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    subject = {"orders": "floor.place", "inventory": "floor.reserve", "payment": "floor.authorize"}[role]
    await nc.subscribe(subject, queue=role, cb=spawn)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
loop.run(main())
"""

# A participant: on request, publish its event, wait for the stream's ack, answer.
# Orders: publish "created", call both participants in turn, publish "confirmed", wait for both acks, answer.
ROLE = (
    """
import asyncio, json, sys, uuid, nats
from bus import loop
role, url = sys.argv[1], sys.argv[2]
EVENT, REPLY = sys.argv[3].encode(), sys.argv[4].encode()
tasks = set()
async def main():
    nc = await nats.connect(url)
    js = nc.jetstream()
    async def publish(kind):
        return await js.publish_async(f"floor.events.{role}.{kind}", EVENT, headers={"Nats-Msg-Id": uuid.uuid4().hex},
                                      wait_stall=None)
    async def participant(msg):
        ack = await publish("done")
        await ack
        await msg.respond(REPLY)
    async def orders(msg):
        created = await publish("created")
        await nc.request("floor.reserve", msg.data, timeout=10, headers={"Idempotency-Key": "saga_x:reserve:invoke"})
        await nc.request("floor.authorize", msg.data, timeout=10, headers={"Idempotency-Key": "saga_x:pay:invoke"})
        confirmed = await publish("confirmed")
        await asyncio.gather(created, confirmed)
        await msg.respond(REPLY)
"""
    + SERVE
)

# The durable floor: the same messages, and the rows the contract makes durable before each one is sent,
# in SQLite with one commit per turn of the event loop for every unit waiting (OMS's group commit, on the
# loop's thread), WAL, synchronous NORMAL (FULL with --sync-always, as OMS_DURABILITY=fsync). Per saga:
# orders looks the request's key up and writes the order, the key, the saga and the "created" outbox row,
# waits for "created" to be in the stream before it calls anyone, records each step's reply in the saga
# (the next step's start in the same commit), and with the last one confirms the order, stores its reply
# under the key and writes the "confirmed" outbox row: three commits, as OMS's order service makes; each
# participant looks its key up, then writes the key with its reply, its own row and its outbox row.
# Acknowledged outbox rows are deleted by the next commit. No validation, no logs, no metrics.
DURABLE_ROLE = (
    """
import asyncio, sqlite3, sys, uuid, nats
from bus import loop
role, url = sys.argv[1], sys.argv[2]
EVENT, REPLY = sys.argv[3].encode(), sys.argv[4].encode()
conn = sqlite3.connect(sys.argv[5], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=" + sys.argv[6])
conn.executescript(
    "CREATE TABLE keys (key TEXT PRIMARY KEY, reply BLOB) WITHOUT ROWID;"
    "CREATE TABLE rows (id TEXT PRIMARY KEY, status TEXT, body BLOB) WITHOUT ROWID;"
    "CREATE TABLE sagas (id TEXT PRIMARY KEY, order_id TEXT, steps TEXT) WITHOUT ROWID;"
    "CREATE TABLE outbox (event_id TEXT PRIMARY KEY, subject TEXT, body BLOB) WITHOUT ROWID;"
)
tasks, waiting, acked = set(), [], []
wake = asyncio.Event()
async def commit(statements):
    done = asyncio.get_running_loop().create_future()
    waiting.append((statements, done))
    wake.set()
    await done
async def writer():
    global waiting, acked
    while True:
        await wake.wait()
        wake.clear()
        batch, waiting = waiting, []
        gone, acked = acked, []
        conn.execute("BEGIN")
        conn.executemany("DELETE FROM outbox WHERE event_id = ?", gone)
        for statements, _ in batch:
            for sql, args in statements:
                conn.execute(sql, args)
        conn.execute("COMMIT")
        for _, done in batch:
            done.set_result(None)
def lookup(key):
    return conn.execute("SELECT reply FROM keys WHERE key = ?", (key,)).fetchone()
async def main():
    nc = await nats.connect(url)
    js = nc.jetstream()
    tasks.add(asyncio.create_task(writer()))
    def outbox(kind):
        event_id = uuid.uuid4().hex
        return event_id, ("INSERT INTO outbox VALUES (?, ?, ?)", (event_id, f"floor.events.{role}.{kind}", EVENT))
    async def publish(kind, event_id):
        ack = await js.publish_async(f"floor.events.{role}.{kind}", EVENT, headers={"Nats-Msg-Id": event_id},
                                     wait_stall=None)
        await ack
        acked.append((event_id,))
    async def participant(msg):
        key = msg.headers["Idempotency-Key"]
        if lookup(key) is not None:
            return await msg.respond(REPLY)
        event_id, row = outbox("done")
        await commit([("INSERT INTO keys VALUES (?, ?)", (key, REPLY)),
                      ("INSERT INTO rows VALUES (?, 'ACTIVE', ?)", (key, msg.data)), row])
        await publish("done", event_id)
        await msg.respond(REPLY)
    async def orders(msg):
        order_id, saga_id = uuid.uuid4().hex, uuid.uuid4().hex
        key = msg.headers["Idempotency-Key"] + order_id  # the floor's client sends one key for every saga
        lookup(key)
        event_id, row = outbox("created")
        await commit([("INSERT INTO rows VALUES (?, 'PENDING', ?)", (order_id, msg.data)),
                      ("INSERT INTO keys VALUES (?, NULL)", (key,)),
                      ("INSERT INTO sagas VALUES (?, ?, '[]')", (saga_id, order_id)), row])
        await publish("created", event_id)  # the order is in the stream before stock or money is touched
        step = "UPDATE sagas SET steps = json_insert(steps, '$[#]', json(?)) WHERE id = ?"
        reply = await nc.request("floor.reserve", msg.data, timeout=10, headers={"Idempotency-Key": f"{saga_id}:r"})
        await commit([(step, (reply.data, saga_id))])  # the next step's start rides in the same commit
        reply = await nc.request("floor.authorize", msg.data, timeout=10, headers={"Idempotency-Key": f"{saga_id}:p"})
        event_id, row = outbox("confirmed")  # the last step's outcome and the confirmation: one commit
        await commit([(step, (reply.data, saga_id)), ("UPDATE rows SET status = 'CONFIRMED' WHERE id = ?", (order_id,)),
                      ("UPDATE keys SET reply = ? WHERE key = ?", (REPLY, key)), row])
        await publish("confirmed", event_id)
        await msg.respond(REPLY)
"""
    + SERVE
)

# Bodies of the sizes OMS sends: an event (with its data), a participant's reply, the placing request.
EVENT = {
    "event_id": "evt_01a2189a989718fef8a66bd7",
    "type": "stock_reserved",
    "occurred_at": "2026-11-26T00:00:00.000Z",
    "service": "inventory",
    "order_id": "ord_01a2189a989718fef8a66bd7",
    "saga_id": "saga_01a2189a989718fef8a66bd7",
    "data": {
        "items": [{"sku": "KB-101", "qty": 1, "unit_price_cents": 4999}],
        "total_cents": 4999,
        "currency": "EUR",
        "created_at": "2026-11-26T00:00:00.000Z",
    },
}
RESERVATION = {
    "order_id": "ord_01a2189a989718fef8a66bd7",
    "status": "ACTIVE",
    "items": [{"sku": "KB-101", "qty": 1, "unit_price_cents": 4999}],
    "total_cents": 4999,
    "currency": "EUR",
    "created_at": "2026-11-26T00:00:00.000Z",
}
REPLY = {"ok": True, "result": RESERVATION}
PLACE = json.dumps(
    {"customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}], "payment_method": "card", "wait_ms": 30000}
).encode()


async def _sagas(nc: nats.NATS, in_flight: int, sagas: int) -> tuple[float, list[float]]:
    slots = asyncio.Semaphore(in_flight)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            t0 = time.perf_counter()
            await nc.request("floor.place", PLACE, timeout=30, headers={"Idempotency-Key": "load-x"})
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(sagas)))
    return sagas / (time.perf_counter() - started), latencies


async def _open_loop(nc: nats.NATS, rate: float, sagas: int) -> list[float]:
    """Sagas started at a fixed rate, whatever is in flight (as `oms load --rate`); their latencies."""
    latencies: list[float] = []

    async def one(index: int, started: float) -> None:
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        await nc.request("floor.place", PLACE, timeout=30, headers={"Idempotency-Key": "load-x"})
        latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(one(i, started) for i in range(sagas)))
    return latencies


async def measure(
    url: str,
    server_pid: int,
    sagas: int = 10_000,
    levels: tuple[int, ...] = (1, 64, 256),
    rates: tuple[float, ...] = (),
    durable_in: Path | None = None,
    sync_always: bool = False,
) -> dict:
    """Start the three role processes against `url` and run the saga's messages at each level; then
    offer half the best rate, and each of `rates`, in an open loop. With `durable_in` (a directory), the
    roles are the durable floor's, each with its database there."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    config = js_api.StreamConfig(
        name=STREAM, subjects=["floor.events.>"], storage=js_api.StorageType.FILE, duplicate_window=120
    )
    await js.add_stream(config)
    roles = {}
    try:
        for role in ("orders", "inventory", "payment"):
            args = [role, url, json.dumps(EVENT), json.dumps(REPLY)]
            if durable_in is not None:
                args += [str(durable_in / f"{role}.db"), "FULL" if sync_always else "NORMAL"]
            script = ROLE if durable_in is None else DURABLE_ROLE
            roles[role] = await asyncio.create_subprocess_exec(sys.executable, "-c", script, *args, stdout=PIPE)
            assert roles[role].stdout is not None
            await roles[role].stdout.readline()
        await _sagas(nc, 16, 300)  # warm up
        pids = {**{role: p.pid for role, p in roles.items()}, "nats-server": server_pid}
        results = []
        for in_flight in levels:
            count = max(300, sagas // 10) if in_flight == 1 else sagas
            cpu0, own0 = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.process_time()
            rate, latencies = await _sagas(nc, in_flight, count)
            by_process = {name: (cpu_seconds(pid) - cpu0[name]) / count * 1e6 for name, pid in pids.items()}
            by_process["client"] = (time.process_time() - own0) / count * 1e6
            ordered = sorted(latencies)
            results.append(
                {
                    "in_flight": in_flight,
                    "sagas_per_s": round(rate, 1),
                    "p50_ms": round(statistics.median(ordered) * 1000, 2),
                    "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 2),
                    # The client's CPU is the load generator's: left out, as saga_throughput.py leaves it out.
                    "cpu_us_per_saga": round(sum(v for k, v in by_process.items() if k != "client"), 1),
                    "cpu_us_per_saga_by_process": {k: round(v, 1) for k, v in by_process.items()},
                }
            )
        best = max(r["sagas_per_s"] for r in results)
        half = sorted(await _open_loop(nc, best / 2, max(1000, sagas // 2)))
        offered = []
        for rate in rates:
            latencies = sorted(await _open_loop(nc, rate, max(1000, sagas // 2)))
            offered.append({"rate": rate, **_percentiles(latencies)})
        return {
            "levels": results,
            "best_sagas_per_s": best,
            # The latency target is stated at half the peak rate: the floor's own figure at half its peak.
            "half_rate": {
                "rate": round(best / 2, 1),
                **_percentiles(half),
            },
            # The same at fixed offered rates: where latency at a given rate stands with no work at all.
            "open_loop": offered,
        }
    finally:
        for proc in roles.values():
            proc.kill()
            await proc.wait()
        await nc.close()


def _percentiles(ordered: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(0.90 * (len(ordered) - 1))] * 1000, 2),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 2),
    }


def report(floor: dict, rr: dict | None = None) -> None:
    for r in floor["levels"]:
        print(
            f"  floor, {r['in_flight']:>3} in flight: {r['sagas_per_s']:>7,.0f} sagas/s  p50 {r['p50_ms']:>6.2f} ms  "
            f"p99 {r['p99_ms']:>6.2f} ms  CPU {r['cpu_us_per_saga']:>6.0f} us/saga"
        )
    half = floor["half_rate"]
    print(
        f"  floor at half its peak ({half['rate']:,.0f}/s offered): "
        f"p50 {half['p50_ms']:.2f} ms  p99 {half['p99_ms']:.2f} ms"
    )
    for r in floor.get("open_loop", ()):
        print(
            f"  floor at {r['rate']:>7,.0f}/s offered: p50 {r['p50_ms']:>6.2f} ms  p90 {r['p90_ms']:>6.2f} ms  "
            f"p99 {r['p99_ms']:>6.2f} ms"
        )
    if rr:
        print(
            f"  raw request-reply in the same run: {rr['rr_64_per_s']:,.0f}/s at 64 in flight, "
            f"{rr['cpu_us_per_rr_64']} us CPU each"
        )
        print(f"  the floor's best is {floor['best_sagas_per_s'] / rr['rr_64_per_s']:.3f} x raw round trips/s")


async def run_floor(
    sagas: int = 10_000,
    *,
    with_rr: bool = True,
    rates: tuple[float, ...] = (),
    sync_always: bool = False,
    durable: bool = False,
) -> dict:
    """The floor (and raw request-reply, unless told not to) on a nats-server of its own. `sync_always`:
    the server syncs every JetStream write before it acknowledges it, as OMS's `OMS_DURABILITY=fsync` has
    its nats-server do (the floor has no database to sync; the durable floor's commits sync too).
    `durable`: the durable floor, whose handlers also write the rows the contract makes durable."""
    with tempfile.TemporaryDirectory() as tmp:
        config = None
        if sync_always:
            config = Path(tmp) / "sync.conf"
            config.write_text("jetstream {\n  sync_interval: always\n}\n")
        server, url = natsserver.start(Path(tmp) / "store", config=config)
        try:
            rr = await rr_measure(url, 20_000, server_pid=server.pid) if with_rr else None
            durable_in = Path(tmp) if durable else None
            floor = await measure(url, server.pid, sagas, rates=rates, durable_in=durable_in, sync_always=sync_always)
        finally:
            server.terminate()
            server.wait()
    return {"floor": floor, "rr": rr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=10_000, help="sagas per level (a tenth of it at 1 in flight)")
    parser.add_argument(
        "--rates",
        type=lambda text: tuple(float(r) for r in text.split(",")),
        default=(),
        help="also offer these rates (sagas/s, comma-separated) in an open loop and print their latency",
    )
    parser.add_argument(
        "--sync-always", action="store_true", help="the server syncs every JetStream write (as OMS_DURABILITY=fsync)"
    )
    parser.add_argument(
        "--durable", action="store_true", help="the durable floor: the handlers also write the rows the contract keeps"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = loop.run(run_floor(args.sagas, rates=args.rates, sync_always=args.sync_always, durable=args.durable))
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.durable:
        print("the messages of a saga, and the rows the contract makes durable before each is sent")
        report(result["floor"], result["rr"])
    else:
        print("the messages of a saga, with no work in the handlers")
        report(result["floor"], result["rr"])


if __name__ == "__main__":
    main()
