"""`oms demo`: a throwaway stack in a temporary OMS_HOME, then scenes that show what OMS does.

A scene is data: (name, one line saying what it shows, async function of a Stage). The stage
places orders and shows stock; `expect` records whether the scene showed what it set out to.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bus import contract as c
from bus.client import Client
from bus.natsserver import free_port
from bus.settings import SERVICES, Settings
from bus.subjects import INVENTORY_STOCK, ORDERS_PLACE
from cli import session, stack, views
from cli.failures import ExitCode, reported
from cli.options import JsonFlag
from cli.output import Output
from cli.session import config_of, parse

app = typer.Typer()


@dataclass
class Stage:
    """What a scene acts on: a client of the demo stack, and the output to show results on."""

    client: Client
    out: Output
    scene: str
    problems: list[str] = field(default_factory=list)

    async def stock(self, *skus: str, show: bool = True) -> dict[str, c.Product]:
        """Products (all, or these SKUs) by SKU; shown as a short table."""
        raw = await self.client.call(INVENTORY_STOCK, {})
        products = [p for p in parse(c.Stock, raw, INVENTORY_STOCK).products if not skus or p.sku in skus]
        if show:
            title = "Stock now" if skus else "Catalog"
            self._show("stock", {"products": [p.model_dump() for p in products]}, views.stock(products, title))
        return {p.sku: p for p in products}

    async def place(self, customer: str, items: dict[str, int], method: str = "card") -> c.Order:
        """Place an order, wait for its outcome and show it."""
        lines = ", ".join(f"{qty} x {sku}" for sku, qty in items.items())
        self.out.note(f"[bold]{customer}[/] orders {lines}, paying with [bold]{method}[/]")
        cmd = c.PlaceOrder(
            customer_id=customer,
            items=[c.Line(sku=sku, qty=qty) for sku, qty in items.items()],
            payment_method=method,  # type: ignore[arg-type]
        )
        raw = await self.client.call(
            ORDERS_PLACE, cmd, timeout_s=cmd.wait_ms / 1000 + 5, idempotency_key=str(uuid.uuid4())
        )
        order = parse(c.Order, raw, ORDERS_PLACE)
        self._show("order", raw, views.order(order))
        return order

    def expect(self, ok: bool, what: str) -> None:
        """Say whether the scene showed `what`; a miss makes the demo exit 1."""
        if not ok:
            self.problems.append(f"{self.scene}: {what}")
        self.out.note(f"  [green]✓[/] {what}" if ok else f"  [bold red]✗ expected:[/] {what}")

    def _show(self, kind: str, raw: object, view: object) -> None:
        if self.out.as_json:
            self.out.json({"scene": self.scene, "kind": kind, "result": raw}, line=True)
        else:
            self.out.console.print(view)


# -- scenes -------------------------------------------------------------------


async def catalog(stage: Stage) -> None:
    products = await stage.stock()
    stage.expect(bool(products), "the inventory service seeded its catalog")


async def happy_path(stage: Stage) -> None:
    before = (await stage.stock("KB-101", show=False))["KB-101"]
    order = await stage.place("alice", {"KB-101": 2})
    after = (await stage.stock("KB-101"))["KB-101"]
    stage.expect(order.status is c.OrderStatus.CONFIRMED, "the order is CONFIRMED")
    stage.expect(
        order.total_cents == 2 * before.price_cents,
        f"its total is 2 x {views.money(before.price_cents)} = {views.money(2 * before.price_cents)}",
    )
    stage.expect(after.reserved == before.reserved + 2, "2 keyboards are now reserved for it")


async def out_of_stock(stage: Stage) -> None:
    before = (await stage.stock("LAMP-1", show=False))["LAMP-1"]
    order = await stage.place("bob", {"LAMP-1": before.available + 2})
    after = (await stage.stock("LAMP-1"))["LAMP-1"]
    stage.expect(
        order.status is c.OrderStatus.FAILED and order.failure_reason == "OUT_OF_STOCK",
        "the order FAILED with OUT_OF_STOCK",
    )
    stage.expect(after.reserved == before.reserved, "nothing stays reserved: no lamp is oversold")


async def declined(stage: Stage) -> None:
    before = (await stage.stock("HD-404", show=False))["HD-404"]
    order = await stage.place("carol", {"HD-404": 1}, method="card_declined")
    after = (await stage.stock("HD-404"))["HD-404"]
    stage.expect(
        order.status is c.OrderStatus.FAILED and order.failure_reason == "PAYMENT_DECLINED",
        "the order FAILED with PAYMENT_DECLINED",
    )
    stage.expect(after.reserved == before.reserved, "the saga released the headphones it had reserved")


@dataclass(frozen=True)
class Scene:
    name: str
    description: str
    run: Callable[[Stage], Awaitable[None]]


SCENES: list[Scene] = [
    Scene("catalog", "the catalog the inventory service seeds on its first start", catalog),
    Scene("happy", "2 keyboards paid by card: reserve, authorize, confirm", happy_path),
    Scene("out-of-stock", "more lamps than there are: the saga stops at the reservation", out_of_stock),
    Scene("declined", "a declined card: the reservation is compensated (released)", declined),
]


# -- the command ----------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    scene: Annotated[str | None, typer.Argument(help="Run only this scene (see --list).")] = None,
    list_scenes: Annotated[bool, typer.Option("--list", help="List the scenes and exit.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start a throwaway stack in a temporary OMS_HOME, play the scenes, stop it and clean up."""
    out = Output(as_json)
    if list_scenes:
        table = Table("Scene", "What it shows")
        for s in SCENES:
            table.add_row(s.name, s.description)
        out.result([{"name": s.name, "description": s.description} for s in SCENES], table)
        return
    chosen = _select(scene)
    config = config_of(ctx)
    home = Path(tempfile.mkdtemp(prefix="oms-demo-"))
    settings = demo_settings(config.settings, home)
    stack_settings = config.stack.model_copy(update={"nats_port": 0})  # any free port
    problems: list[str] = []
    try:
        with reported(settings, as_json=as_json):
            problems = asyncio.run(play(settings, stack_settings, chosen, out))
    finally:
        with stack.signals_held():
            stack.down(settings, stack_settings)
            shutil.rmtree(home, ignore_errors=True)
        out.note("[dim]stopped the demo stack and removed its home[/]")
    if problems:
        out.note("[bold red]the demo did not show everything it meant to:[/]\n  " + "\n  ".join(problems))
    raise typer.Exit(ExitCode.FAILED if problems else ExitCode.OK)


def _select(name: str | None) -> list[Scene]:
    if name is None:
        return list(SCENES)
    for s in SCENES:
        if s.name == name:
            return [s]
    names = ", ".join(s.name for s in SCENES)
    raise typer.BadParameter(f"no scene {name!r}; one of: {names}", param_hint="'SCENE'")


def demo_settings(base: Settings, home: Path) -> Settings:
    """The demo's own home, embedded server and free metrics ports: never in the way of `oms up`."""
    ports = {f"metrics_port_{name}": free_port() for name in SERVICES}
    return base.model_copy(update={"home": home, "nats_url": None, **ports})


async def play(settings: Settings, stack_settings: stack.StackSettings, scenes: list[Scene], out: Output) -> list[str]:
    """Start the stack, run the scenes; the problems they found (the caller stops the stack)."""
    out.note(f"Starting a throwaway OMS in {settings.home} …")
    started = await stack.up(settings, stack_settings)
    out.note(f"[dim]nats-server on {started.url}; {', '.join(SERVICES)} answer[/]")
    problems: list[str] = []
    async with session.client(settings) as client:
        for s in scenes:
            if not out.as_json:
                out.console.rule(f"[bold]{s.name}[/]: {s.description}", align="left")
            stage = Stage(client, out, s.name)
            await s.run(stage)
            problems += stage.problems
    return problems
