"""What OMS adds to the messages, piece by piece, in one process: CPU per request or per saga.

    python benchmarks/own_work.py [--requests N] [--sagas N]

- **runner**: a request through the service runner (`bus.service.ServiceRunner`: validation,
  idempotency header, metrics, the access log line, the reply envelope) against the same request
  answered by a raw nats-py responder, on a nats-server of its own; the difference is the runner's.
- **client**: a call through `bus.client.Client` with its circuit breakers against a raw `nc.request`.
- **engine**: the order service's units of work and the saga engine for one saga (the order and saga
  rows, both steps' records, the confirmation and its events, all group-committed), with a `send`
  that answers at once: no transport at all. Also the SQL statements per saga.

`saga_floor.py` measures the messages alone; this measures what sits on top of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from saga_floor import RESERVATION

from bus import contract as c
from bus import db as db_module
from bus import logs, loop, natsserver
from bus.breaker import Breakers
from bus.client import Client
from bus.db import Database
from bus.idempotency import once, request_hash
from bus.ids import new_id
from bus.saga.definition import StepCall
from bus.saga.engine import SagaEngine
from bus.service import ServiceRunner
from bus.settings import Settings
from bus.subjects import INVENTORY_RESERVE, Route
from order_svc import orders
from order_svc.saga import PLACE_ORDER, PlaceOrderData, saga_of
from order_svc.service import SPEC

IN_FLIGHT = 64
KEY = "saga_01a2189a989718fef8a66bd7:reserve_stock:invoke"
RESERVE = {"order_id": "ord_01a2189a989718fef8a66bd7", "items": [{"sku": "KB-101", "qty": 1}]}
AUTHORIZED = {
    "order_id": "ord_01a2189a989718fef8a66bd7",
    "status": "AUTHORIZED",
    "amount_cents": 4999,
    "currency": "EUR",
    "created_at": "2026-11-26T00:00:00.000Z",
    "updated_at": "2026-11-26T00:00:00.000Z",
}


async def cpu_per_call(call: Callable[[], Awaitable[Any]], count: int) -> float:
    """Process CPU time per call, `IN_FLIGHT` calls outstanding (after a warm-up)."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with slots:
            await call()

    await asyncio.gather(*(one() for _ in range(500)))
    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(count)))
    return (time.process_time() - started) / count * 1e6


async def transport(requests: int, rounds: int, log_dir: Path) -> dict[str, list[float]]:
    server, url = natsserver.start(log_dir / "nats")
    results: dict[str, list[float]] = {"raw": [], "runner": [], "request": [], "client": []}
    try:
        served, calling = await nats.connect(url), await nats.connect(url)
        reply = json.dumps({"ok": True, "result": RESERVATION}).encode()

        async def raw(msg: Any) -> None:
            await msg.respond(reply)

        await served.subscribe("raw.reserve", cb=raw)
        await served.subscribe(INVENTORY_RESERVE.subject, cb=raw, queue="raw")  # for the client's calls
        runner = ServiceRunner(served, "bench", Settings(), version="1.0.0", description="own work")

        reservation = c.Reservation.model_validate(RESERVATION)

        async def handler(cmd: Any, call: Any) -> c.Reservation:
            return reservation

        runner.add(Route("bench", "reserve", c.Reserve, mutating=True, reply=c.Reservation), handler)
        await runner.start()
        body, headers = json.dumps(RESERVE).encode(), {"Idempotency-Key": KEY}
        client = Client(calling, breakers=Breakers(Settings().breaker), timeout_s=5)
        for _ in range(rounds):
            results["raw"].append(
                await cpu_per_call(lambda: calling.request("raw.reserve", body, timeout=5, headers=headers), requests)
            )
            results["runner"].append(
                await cpu_per_call(lambda: calling.request("bench.reserve", body, timeout=5, headers=headers), requests)
            )
            results["request"].append(
                await cpu_per_call(
                    lambda: calling.request(INVENTORY_RESERVE.subject, body, timeout=5, headers=headers), requests
                )
            )
            results["client"].append(
                await cpu_per_call(
                    lambda: client.call(INVENTORY_RESERVE, RESERVE, timeout_s=5, idempotency_key=KEY), requests
                )
            )
        await runner.stop()
        await served.close()
        await calling.close()
    finally:
        server.terminate()
        server.wait()
    return results


class CountingConnection(sqlite3.Connection):
    """Counts the statements a connection runs (the writer's)."""

    statements = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:  # type: ignore[override]
        CountingConnection.statements += 1
        return super().execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:  # type: ignore[override]
        CountingConnection.statements += 1
        return super().executemany(sql, rows)


async def engine(sagas: int, rounds: int, folder: Path) -> dict[str, Any]:
    connect = db_module.sqlite3.connect
    db_module.sqlite3.connect = lambda *a, **k: connect(*a, factory=CountingConnection, **k)  # the writer's
    try:
        db = await Database(folder / "orders.db", "orders", SPEC.schema).open()
    finally:
        db_module.sqlite3.connect = connect

    async def send(call: StepCall) -> Any:
        await asyncio.sleep(0)  # an answer in the next turn of the loop, as a reply would come
        # Answers for this order, as the participants give them (the engine checks that they do), read as
        # the client reads a reply (it parses the JSON into the model; here the parsed JSON is given).
        answer = RESERVATION if call.route.name == "reserve" else AUTHORIZED
        assert call.reply is not None
        return call.reply.model_validate({**answer, "order_id": call.command.order_id})  # type: ignore[attr-defined]

    saga_engine = SagaEngine(db, PLACE_ORDER, send, Settings().saga)
    cmd = c.PlaceOrder(customer_id="bench", items=[c.Line(sku="KB-101", qty=1)])
    digest = request_hash(cmd, orders.PLACE_HASH_EXCLUDES)
    counter = iter(range(10**9))

    async def one() -> None:
        """What `orders.place` does with its database and engine: create (it starts once committed), wait
        for the end."""
        order_id, key = new_id("ord"), f"bench-{next(counter)}"
        saga_id = saga_of(order_id)

        def effect(tx: Any) -> c.Order:
            order = orders.create(tx, order_id, saga_id, cmd, key, digest)
            saga_engine.create(tx, saga_id, order_id, PlaceOrderData.placed(order_id, cmd))
            return order

        await db.commit(once(key, "orders.place", digest, effect, cmd=cmd, exclude=orders.PLACE_HASH_EXCLUDES))
        ended = await saga_engine.outcome(saga_id, 30)
        if not isinstance(ended, c.Order) or ended.status != c.OrderStatus.CONFIRMED:
            raise RuntimeError(f"saga ended with {ended}")

    per_saga = []
    for _ in range(rounds):
        before = CountingConnection.statements
        per_saga.append(await cpu_per_call(one, sagas))
        statements = (CountingConnection.statements - before) / (sagas + 500)
    await db.close()
    return {"cpu_us_per_saga": per_saga, "statements_per_saga": round(statements, 1)}


async def run(requests: int, sagas: int, rounds: int, folder: Path) -> dict[str, Any]:
    return {"transport": await transport(requests, rounds, folder), "engine": await engine(sagas, rounds, folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per measurement")
    parser.add_argument("--sagas", type=int, default=5_000, help="sagas per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "service.log", "a") as log_file:
        # The access log line is part of the runner's cost: written to a file, as a service writes it.
        logs.setup("bench")
        logging.getLogger().handlers[:] = [logs.handler("bench", log_file, readable=False)]
        result = loop.run(run(args.requests, args.sagas, args.rounds, Path(tmp)))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    t = result["transport"]
    mid = {name: sorted(values)[len(values) // 2] for name, values in t.items()}  # medians of the rounds
    print(f"CPU per request or call (medians of {args.rounds} rounds, {IN_FLIGHT} in flight, requester included):")
    print(f"  raw nats-py request-reply    {mid['raw']:7.1f} us")
    print(f"  through the service runner   {mid['runner']:7.1f} us  (+{mid['runner'] - mid['raw']:.1f})")
    print(f"  raw nc.request               {mid['request']:7.1f} us")
    print(f"  Client.call with breakers    {mid['client']:7.1f} us  (+{mid['client'] - mid['request']:.1f})")
    e = result["engine"]
    print(
        f"the order service's units of work and saga engine, no transport: "
        f"{sorted(e['cpu_us_per_saga'])[len(e['cpu_us_per_saga']) // 2]:.1f} us CPU per saga, "
        f"{e['statements_per_saga']} SQL statements per saga"
    )


if __name__ == "__main__":
    main()
