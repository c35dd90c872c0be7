"""The load generator behind `oms load` and the benchmarks: many connections, bounded in count and time."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as Nats

from bus import auth
from bus import subjects as s
from bus.client import Client
from bus.connect import connect
from bus.contract import TERMINAL
from bus.errors import OmsError
from bus.settings import Settings

SCARCE_SKU = "LAMP-1"  # the demo catalog keeps only a few: an order for more is out of stock
DEFAULT_SKUS = ("KB-101", "MS-202", "MN-303", "HD-404", "CB-505", "DK-606", "WC-707")
KINDS = ("ok", "declined", "out_of_stock", "shipped", "returned")
SHARES = KINDS[1:]


@dataclass(frozen=True)
class Mix:
    """Shares of declined and out-of-stock orders, and of orders shipped once confirmed (`shipped`) or
    shipped and then returned whole (`returned`); the rest should confirm."""

    declined: float = 0.0
    out_of_stock: float = 0.0
    shipped: float = 0.0
    returned: float = 0.0

    @property
    def fulfils(self) -> bool:
        """Whether some orders go past confirmation (shipping and returning them is an admin's)."""
        return bool(self.shipped or self.returned)

    @classmethod
    def parse(cls, text: str) -> Mix:
        """`declined=0.1,out_of_stock=0.05,shipped=0.2,returned=0.05` -> Mix; ValueError names what is wrong."""
        shares: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep or name.strip() not in SHARES:
                raise ValueError(f"{part!r}: expected one of {', '.join(f'{k}=F' for k in SHARES)}")
            try:
                share = float(value)
            except ValueError:
                raise ValueError(f"{part!r}: {value!r} is not a number") from None
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{part!r}: a share is between 0 and 1")
            shares[name.strip()] = share
        mix = cls(**shares)
        if sum(getattr(mix, k) for k in SHARES) > 1.0:
            raise ValueError(f"{' + '.join(SHARES)} must not exceed 1")
        return mix

    def draw(self, rng: random.Random) -> str:
        x = rng.random()
        for kind in SHARES:
            share = getattr(self, kind)
            if x < share:
                return kind
            x -= share
        return "ok"


@dataclass
class LoadPlan:
    orders: int
    concurrency: int = 64
    rate: float | None = None  # orders per second; None = as fast as the concurrency allows
    mix: Mix = field(default_factory=Mix)
    max_seconds: float = 600.0
    connections: int = 4
    skus: tuple[str, ...] = DEFAULT_SKUS
    wait_ms: int = 30_000
    seed: int | None = None


@dataclass
class LoadResult:
    planned: int
    sent: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    saga_counts: dict[str, int] = field(default_factory=dict)
    counts_since_restart: bool = False  # the order service restarted during the run: its counts since then
    stopped_early: bool = False

    @property
    def completed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def terminal(self) -> int:
        return sum(n for status, n in self.outcomes.items() if status in TERMINAL)

    @property
    def rate(self) -> float:
        return self.terminal / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "sent": self.sent,
            "completed": self.completed,
            "seconds": round(self.seconds, 3),
            "sagas_per_s": round(self.rate, 1),
            "latency_ms": {
                name: round(self.percentile(p) * 1000, 2)
                for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
            "outcomes": dict(self.outcomes),
            "kinds": dict(self.by_kind),
            "errors": dict(self.errors),
            "retries": self.saga_counts.get("retries", 0),
            "compensations": self.saga_counts.get("compensations", 0),
            "counts_since_restart": self.counts_since_restart,
            "stopped_early": self.stopped_early,
        }


def order_body(kind: str, index: int, plan: LoadPlan, rng: random.Random, run_id: str) -> dict[str, Any]:
    customer = f"load-{run_id}-{index}"
    if kind == "out_of_stock":
        items = [{"sku": SCARCE_SKU, "qty": 1000}]
    else:
        items = [{"sku": rng.choice(plan.skus), "qty": 1}]
    method = "card_declined" if kind == "declined" else "card"
    wait_ms = min(plan.wait_ms, POLL_WAIT_MS)
    return {"customer_id": customer, "items": items, "payment_method": method, "wait_ms": wait_ms}


COUNTED = ("retries", "compensations")


async def saga_counts(client: Client) -> dict[str, Any]:
    """The order service's saga counters since it started, and when it started (its `health`)."""
    try:
        health = await client.call(s.ORDERS_HEALTH, {}, timeout_s=2)
    except OmsError:
        return {}
    return {"started_at": health.get("started_at"), **(health.get("counts") or {})}


def counted_during(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, int], bool]:
    """Retries and compensations during a run, from the counters before and after it (empty: unknown).

    The counters restart with the order service: after a restart the counts are the ones since then.
    Returns them and whether the service restarted during the run."""
    restarted = bool(before) and bool(after) and before.get("started_at") != after.get("started_at")
    base = {} if restarted or not after else before
    return {k: max(0, int(after.get(k, 0)) - int(base.get(k, 0))) for k in COUNTED}, restarted


async def ensure_stock(client: Client, plan: LoadPlan) -> dict[str, int]:
    """Restock the SKUs the plan uses so that ok orders do not run out (an admin operation); returns the
    units added per SKU."""
    need = plan.orders  # at most one unit of one SKU per order
    stock = await client.call(s.INVENTORY_STOCK, {}, timeout_s=5)
    available = {p["sku"]: p["available"] for p in stock["products"]}
    added: dict[str, int] = {}
    for sku in plan.skus:
        missing = need - available.get(sku, 0)
        while missing > 0:
            qty = min(missing, 1_000_000)
            await client.call(s.INVENTORY_RESTOCK, {"sku": sku, "qty": qty}, idempotency_key=str(uuid.uuid4()))
            added[sku] = added.get(sku, 0) + qty
            missing -= qty
    return added


POLL_WAIT_MS = 5_000  # one request waits at most this long for its saga; then the order is asked again


async def place(client: Client, body: dict[str, Any], key: str, until: float) -> dict[str, Any]:
    """Place an order and wait for its outcome until `until` (perf_counter), in requests of at most
    POLL_WAIT_MS: the same key again asks for the same order, so a request lost with a node costs one
    short wait rather than the whole one."""
    while True:
        order = await client.call(s.ORDERS_PLACE, body, idempotency_key=key)
        if order["status"] in TERMINAL or time.perf_counter() >= until:
            return order


async def fulfil(admin: Client, order: dict[str, Any], kind: str, key: str, wait_ms: int) -> dict[str, Any]:
    """Ship a confirmed order, and return it whole when its kind says so; the order as it ends."""
    if kind not in ("shipped", "returned") or order["status"] != "CONFIRMED":
        return order
    body = {"order_id": order["order_id"], "wait_ms": wait_ms}
    order = await admin.call(s.ORDERS_SHIP, body, idempotency_key=f"{key}-ship")
    if kind == "returned" and order["status"] == "SHIPPED":
        order = await admin.call(s.ORDERS_RETURN, body, idempotency_key=f"{key}-return")
    return order


async def run_load(
    settings: Settings,
    plan: LoadPlan,
    *,
    on_progress: Callable[[LoadResult], None] | None = None,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> LoadResult:
    """Place `plan.orders` orders; returns when all are answered or `plan.max_seconds` runs out.
    `on_start` is called once connected, as the first order is about to leave, and `on_end` when the last
    one is answered: what a benchmark times the orders by, without the connections' setup around them."""
    as_client = auth.login(settings, "cli")
    rng = random.Random(plan.seed)
    run_id = uuid.uuid4().hex[:8]
    conns: list[Nats] = []
    try:
        for i in range(max(1, plan.connections)):
            conns.append(await connect(as_client, f"oms-load-{i}", persistent=False))
        # Patient through a node loss: an order is sent again with its key, also after a request lost with a
        # node (it times out once: its wait, and the patience the settings allow beyond it).
        timeout = min(plan.wait_ms, POLL_WAIT_MS) / 1000 + 2
        clients = [Client(nc, timeout_s=timeout, patience_s=timeout + settings.client_patience_s) for nc in conns]
        admin: Client | None = None
        if plan.mix.fulfils:  # shipping and returns are an operator's: one admin connection for them
            conns.append(await connect(auth.login(settings, "admin"), "oms-load-admin", persistent=False))
            admin = Client(conns[-1], timeout_s=timeout, patience_s=timeout + settings.client_patience_s)
        before = await saga_counts(clients[0])
        result = LoadResult(planned=plan.orders)
        kinds = [plan.mix.draw(rng) for _ in range(plan.orders)]
        bodies = [order_body(kind, i, plan, rng, run_id) for i, kind in enumerate(kinds)]
        result.by_kind.update(kinds)
        next_index = 0
        if on_start is not None:
            on_start()
        started = time.monotonic()
        deadline = started + plan.max_seconds

        async def worker(w: int) -> None:
            nonlocal next_index
            client = clients[w % len(clients)]
            while True:
                index = next_index
                if index >= plan.orders or time.monotonic() >= deadline:
                    return
                next_index += 1
                if plan.rate:
                    delay = started + index / plan.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                result.sent += 1
                t0 = time.perf_counter()
                key = f"load-{run_id}-{index}"
                try:
                    order = await place(client, bodies[index], key, t0 + plan.wait_ms / 1000)
                    placed_s = time.perf_counter() - t0  # the latency is the placement's; shipping comes after
                    if admin is not None:
                        order = await fulfil(admin, order, kinds[index], key, min(plan.wait_ms, POLL_WAIT_MS))
                except OmsError as exc:
                    result.errors[exc.code] += 1
                else:
                    result.latencies_s.append(placed_s)
                    result.outcomes[order["status"]] += 1
                if on_progress is not None:
                    on_progress(result)

        await asyncio.gather(*(worker(w) for w in range(max(1, plan.concurrency))))
        result.seconds = time.monotonic() - started
        if on_end is not None:
            on_end()
        result.stopped_early = result.sent < plan.orders
        result.saga_counts, result.counts_since_restart = counted_during(before, await saga_counts(clients[0]))
        return result
    finally:
        for nc in conns:
            await nc.close()
