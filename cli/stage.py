"""What a demo scene acts on: the stack's settings, a client and an admin client, and the output."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import RenderableType

from bus import contract as c
from bus import subjects as s
from bus.client import Client
from bus.settings import Settings
from bus.stream import Reader, jetstream
from bus.subjects import Route
from cli import views
from cli.events import timeline
from cli.output import Output
from cli.session import parse


@dataclass
class Stage:
    settings: Settings
    client: Client  # as the `cli` user, like any client
    admin: Client  # as `admin`: chaos, restock, the audit, the event stream
    out: Output
    scene: str = ""
    problems: list[str] = field(default_factory=list)

    async def stock(self, *skus: str, show: bool = True) -> dict[str, c.Product]:
        """Products (all, or these SKUs) by SKU; shown as a short table."""
        raw = await self.client.call(s.INVENTORY_STOCK, {})
        products = [p for p in parse(c.Stock, raw, s.INVENTORY_STOCK).products if not skus or p.sku in skus]
        if show:
            title = "Stock now" if skus else "Catalog"
            self.show("stock", {"products": [p.model_dump() for p in products]}, views.stock(products, title))
        return {p.sku: p for p in products}

    async def place(
        self,
        customer: str,
        items: dict[str, int],
        method: str = "card",
        *,
        key: str | None = None,
        wait_ms: int = 10_000,
        show: bool = True,
    ) -> c.Order:
        """Place an order and wait (up to `wait_ms`) for its outcome."""
        lines = ", ".join(f"{qty} x {sku}" for sku, qty in items.items())
        if show:
            self.out.note(f"[bold]{customer}[/] orders {lines}, paying with [bold]{method}[/]")
        body = {
            "customer_id": customer,
            "items": [{"sku": sku, "qty": qty} for sku, qty in items.items()],
            "payment_method": method,
            "wait_ms": wait_ms,
        }
        raw = await self.client.call(
            s.ORDERS_PLACE, body, timeout_s=wait_ms / 1000 + 5, idempotency_key=key or str(uuid.uuid4())
        )
        order = parse(c.Order, raw, s.ORDERS_PLACE)
        if show:
            self.show("order", raw, views.order(order))
        return order

    async def fulfil(self, route: Route, body: dict[str, Any]) -> c.Order:
        """Ship or take back (an operator's, hence as admin), shown like a placed order."""
        raw = await self.admin.call(route, body, timeout_s=15, idempotency_key=str(uuid.uuid4()))
        order = parse(c.Order, raw, route)
        self.show("order", raw, views.order(order))
        return order

    async def order(self, order_id: str) -> c.Order:
        return parse(c.Order, await self.client.call(s.ORDERS_GET, {"order_id": order_id}), s.ORDERS_GET)

    async def until(self, what: str, check: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
        """Poll `check` until it is truthy; a miss is recorded as a problem, not raised."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.05)
        self.expect(False, what)
        return None

    async def stream_leader(self, other_than: str | None = None) -> str | None:
        """The node that leads OMS_EVENTS (None while there is none, or while it is still `other_than`)."""
        try:
            js = await jetstream(self.admin.nc, self.settings.stream_name)
            info = await js.stream_info(self.settings.stream_name)
        except Exception:  # no leader: the API does not answer during an election
            return None
        leader = info.cluster.leader if info.cluster else None
        return None if leader == other_than else leader

    async def replicas_current(self) -> bool:
        try:
            js = await jetstream(self.admin.nc, self.settings.stream_name)
            info = await js.stream_info(self.settings.stream_name)
        except Exception:
            return False
        return bool(info.cluster and info.cluster.leader) and all(r.current for r in info.cluster.replicas or [])

    async def settled(self, order_id: str, timeout_s: float = 25.0) -> c.Order | None:
        async def ended() -> c.Order | None:
            o = await self.order(order_id)
            return o if o.status in c.TERMINAL else None

        return await self.until(f"order {order_id} reaches a final status", ended, timeout_s)

    async def timeline(self, order_id: str) -> list[str]:
        raw = await self.client.call(s.ORDERS_EVENTS, {"order_id": order_id})
        events = parse(c.EventList, raw, s.ORDERS_EVENTS)
        self.show("timeline", raw, timeline(events))
        return [e["type"] for e in events.events]

    async def chaos(self, service: str, **faults: Any) -> None:
        subject = f"chaos.{service}.set" if faults else f"chaos.{service}.clear"
        await self.admin.request(subject, faults)

    async def health(self, service: str) -> dict[str, Any]:
        return await self.client.call(s.HEALTH[service], {})

    async def requests_served(self, service: str, endpoint: str) -> int:
        msg = await self.admin.nc.request(f"$SRV.STATS.{service}", b"", timeout=2)
        stats = json.loads(msg.data)
        return next(e["num_requests"] for e in stats["endpoints"] if e["name"] == endpoint)

    async def events_on(self, subject: str) -> list[dict[str, Any]]:
        """Every event on `subject` so far (read to the end)."""
        js = await jetstream(self.admin.nc, self.settings.stream_name)
        try:
            info = await js.stream_info(self.settings.stream_name, subjects_filter=subject)
        except Exception:
            return []
        wanted = sum((info.state.subjects or {}).values())
        found: list[dict[str, Any]] = []
        if not wanted:
            return found
        reader = await Reader(self.admin.nc, self.settings.stream_name).open(subject, from_start=True)
        try:
            while len(found) < wanted:
                batch = await reader.next_batch(2.0)
                if not batch:
                    break
                found.extend(json.loads(msg.data) for msg in batch)
        finally:
            await reader.close()
        return found

    def expect(self, ok: bool, what: str) -> None:
        """Say whether the scene showed `what`; a miss makes the demo exit 1."""
        if not ok:
            self.problems.append(f"{self.scene}: {what}")
        self.out.note(f"  [green]✓[/] {what}" if ok else f"  [bold red]✗ expected:[/] {what}")

    def say(self, text: str) -> None:
        self.out.note(f"  {text}")

    def show(self, kind: str, raw: object, view: RenderableType) -> None:
        if self.out.as_json:
            self.out.json({"scene": self.scene, "kind": kind, "result": raw}, line=True)
        else:
            self.out.console.print(view)
