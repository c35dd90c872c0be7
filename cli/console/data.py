"""What the console shows, read over NATS as the `cli` user: orders, an order's saga and timeline, stock, the
services, the stream and its nodes; and the `Watch`, which asks the services for their health every second
and keeps what changed (breakers opening and closing, faults) and the throughput it implies.

Like the CLI, the console is a NATS client: no database of its own, no service's code imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as Nats

from bus import contract as c
from bus import subjects as s
from bus.client import Client
from bus.errors import OmsError
from bus.ids import parse_iso
from bus.settings import SERVICES, Settings
from bus.stream import jetstream
from cli.health import health, micro
from cli.nodes import NodeStatus, merge, stream_nodes

log = logging.getLogger(__name__)

WATCH_EVERY_S = 1.0
HISTORY = 120  # seconds of throughput and latency the chart keeps


@dataclass
class ServiceView:
    name: str
    answering: bool
    version: str | None = None
    health: dict[str, Any] | None = None
    requests: int = 0
    errors: int = 0


@dataclass
class Transition:
    at: float
    service: str
    target: str
    before: str
    after: str


@dataclass
class Sample:
    """One second of the stack: sagas ended in it (from the order service's counts), latencies of orders
    seen ending in it (a sample: the newest orders)."""

    at: float
    ended: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class StreamView:
    name: str
    messages: int
    bytes: int
    replicas: int
    nodes: list[NodeStatus] = field(default_factory=list)


class Reads:
    """The console's reads, on one long-lived connection."""

    def __init__(self, settings: Settings, nc: Nats) -> None:
        self.settings = settings
        self.nc = nc
        self.client = Client(nc, timeout_s=5, patience_s=settings.client_patience_s)

    async def orders(self, query: c.ListOrders) -> list[c.Order]:
        return (await self.client.call(s.ORDERS_LIST, query, c.OrderList)).orders

    async def order(self, order_id: str) -> c.Order:
        return await self.client.call(s.ORDERS_GET, c.GetOrder(order_id=order_id), c.Order)

    async def events(self, order_id: str) -> list[dict[str, Any]]:
        return (await self.client.call(s.ORDERS_EVENTS, c.OrderEventsQuery(order_id=order_id), c.EventList)).events

    async def payment(self, order_id: str) -> c.Payment | None:
        try:
            return await self.client.call(s.PAYMENT_GET, c.GetPayment(order_id=order_id), c.Payment)
        except OmsError:
            return None

    async def stock(self) -> list[c.Product]:
        return (await self.client.call(s.INVENTORY_STOCK, c.StockQuery(), c.Stock)).products

    async def services(self, healths: dict[str, dict[str, Any] | None] | None = None) -> list[ServiceView]:
        """Each service's micro INFO and STATS, with its health (asked now, unless `healths` has it)."""
        views = []
        for name in SERVICES:
            info = await micro(self.nc, "INFO", name)
            stats = await micro(self.nc, "STATS", name)
            view = ServiceView(name, answering=info is not None or stats is not None)
            view.version = (info or stats or {}).get("version")
            for e in (stats or {}).get("endpoints") or []:
                view.requests += int(e.get("num_requests") or 0)
                data = e.get("data") if isinstance(e.get("data"), dict) else {}
                view.errors += int(data.get("errors", e.get("num_errors") or 0))
            view.health = healths.get(name) if healths is not None else await health(self.nc, name)
            views.append(view)
        return views

    async def stream(self) -> StreamView | None:
        name = self.settings.stream_name
        try:
            info = await (await jetstream(self.nc, name)).stream_info(name)
        except Exception:  # no stream yet, or JetStream electing
            return None
        found = stream_nodes(info.cluster)
        nodes = merge(self.settings, found, None) if len(found) > 1 else []
        return StreamView(name, info.state.messages, info.state.bytes, info.config.num_replicas or 1, nodes)


class Watch:
    """Asks every service for its health each second; keeps the latest, the breakers' transitions and the
    throughput history for the live pages (one poll for every browser watching)."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads
        self.latest: dict[str, dict[str, Any] | None] = dict.fromkeys(SERVICES)
        self.transitions: deque[Transition] = deque(maxlen=200)
        self.samples: deque[Sample] = deque(maxlen=HISTORY)
        self._ended: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Condition()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            with contextlib.suppress(Exception):
                await self.tick()
            await asyncio.sleep(max(0.05, WATCH_EVERY_S - (time.monotonic() - started)))

    async def tick(self) -> None:
        now = time.time()
        for name in SERVICES:
            current = await health(self.reads.nc, name)
            before = (self.latest.get(name) or {}).get("breakers") or {}
            for target, state in ((current or {}).get("breakers") or {}).items():
                was = before.get(target, "closed")
                if state != was:
                    self.transitions.appendleft(Transition(now, name, target, was, state))
            self.latest[name] = current
        counts = (self.latest.get("orders") or {}).get("counts") or {}
        ended = sum(int(counts.get(k, 0)) for k in ("completed", "failed", "cancelled"))
        delta = 0 if self._ended is None or ended < self._ended else ended - self._ended
        self._ended = ended
        p50, p99 = await self._latency(now)
        self.samples.append(Sample(now, delta, p50, p99))
        async with self.changed:
            self.changed.notify_all()

    async def _latency(self, now: float) -> tuple[float | None, float | None]:
        """From the newest orders that ended within the last second: their saga time (a sample)."""
        try:
            newest = await self.reads.orders(c.ListOrders(limit=200))
        except OmsError:
            return None, None
        took = sorted(
            (parse_iso(o.updated_at) - parse_iso(o.created_at)) * 1000
            for o in newest
            if o.status in c.TERMINAL and now - parse_iso(o.updated_at) <= WATCH_EVERY_S
        )
        if not took:
            return None, None
        return took[len(took) // 2], took[min(len(took) - 1, int(0.99 * len(took)))]

    async def next_change(self, timeout_s: float) -> None:
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)
