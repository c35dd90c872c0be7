"""`oms order`: place, get, list, cancel orders and show an order's timeline."""

from __future__ import annotations

import asyncio
import uuid
from enum import StrEnum
from typing import Annotated, Any, get_args

import typer

from bus import contract as c
from bus.errors import RequestTimeout
from bus.settings import Settings
from bus.subjects import ORDERS_CANCEL, ORDERS_EVENTS, ORDERS_GET, ORDERS_LIST, ORDERS_PLACE, ORDERS_RETURN, ORDERS_SHIP
from cli import completion, listing, views
from cli.events import timeline
from cli.failures import order_outcome, reported
from cli.options import (
    JsonFlag,
    KeyOption,
    OrderIdArgument,
    OutputOption,
)
from cli.output import Output
from cli.session import call, client, command, parse, read_and_show, settings_of

app = typer.Typer(help="Place, look up, list, cancel, ship and return orders.", no_args_is_help=True)

# Choices come from the contract, so a new payment method needs no CLI change.
Method = StrEnum("Method", [(m, m) for m in get_args(c.PaymentMethod)])

# The reply to orders.place comes when the saga ends or `wait_ms` runs out; allow for the trip.
PLACE_MARGIN_S = 5.0
DEFAULT_WAIT_MS = c.PlaceOrder.model_fields["wait_ms"].default

PLACE_FLAGS = {
    "customer_id": "--customer",
    "items": "--item",
    "payment_method": "--method",
    "wait_ms": "--wait-ms",
}


def parse_items(values: list[str]) -> list[dict[str, object]]:
    """`KB-101:2` -> {"sku": "KB-101", "qty": 2}; anything else is a usage error naming --item."""
    lines: dict[str, int] = {}
    for value in values:
        sku, sep, qty_text = value.rpartition(":")
        sku = sku.strip().upper()
        if not sep or not sku:
            raise typer.BadParameter(f"{value!r} is not SKU:QTY (for example KB-101:2)", param_hint="'--item'")
        try:
            qty = int(qty_text)
        except ValueError:
            raise typer.BadParameter(
                f"{value!r}: the quantity {qty_text!r} is not a whole number", param_hint="'--item'"
            ) from None
        if qty < 1:
            raise typer.BadParameter(f"{value!r}: the quantity must be at least 1", param_hint="'--item'")
        if sku in lines:
            raise typer.BadParameter(f"{sku} appears more than once; give it one line", param_hint="'--item'")
        lines[sku] = qty
    return [{"sku": sku, "qty": qty} for sku, qty in lines.items()]


@app.command()
def place(
    ctx: typer.Context,
    customer: Annotated[str, typer.Option("--customer", "-c", help="Customer id.")],
    item: Annotated[
        list[str],
        typer.Option(
            "--item",
            "-i",
            metavar="SKU:QTY",
            help="A line, e.g. KB-101:2; repeat for more lines.",
            autocompletion=completion.items,
        ),
    ],
    method: Annotated[Method, typer.Option("--method", "-m", help="Payment method.")] = Method("card"),
    wait_ms: Annotated[
        int | None,
        typer.Option(
            "--wait-ms",
            min=0,
            max=60_000,
            help=f"How long to wait for the outcome (default {DEFAULT_WAIT_MS}); the saga goes on after.",
        ),
    ] = None,
    key: KeyOption = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Place an order and wait for its outcome. Exit 1 when it fails (out of stock, declined...), saying why."""
    settings = settings_of(ctx)
    cmd = command(
        c.PlaceOrder,
        PLACE_FLAGS,
        customer_id=customer,
        items=parse_items(item),
        payment_method=str(method.value),
        wait_ms=wait_ms,
    )
    key = key or str(uuid.uuid4())
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        raw, order = asyncio.run(_place(settings, cmd, key, with_reason=not out.as_json))
    out.result(raw, views.order(order))
    out.note(f"[dim]idempotency key {key}[/]")
    if order.status not in c.TERMINAL and order.status is not c.OrderStatus.COMPENSATING:
        out.note(f"still in progress: `oms order get {order.order_id}` shows how it ends")
    raise typer.Exit(order_outcome(order.status))


async def _place(
    settings: Settings, cmd: c.PlaceOrder, key: str, *, with_reason: bool
) -> tuple[dict[str, Any], c.Order]:
    """The placed order; a failed one with its saga, for the failing step's words (the reply names only
    the reason). The JSON printed stays the contract's reply."""
    async with client(settings) as cl:
        try:
            raw = await cl.call(ORDERS_PLACE, cmd, timeout_s=cmd.wait_ms / 1000 + PLACE_MARGIN_S, idempotency_key=key)
        except RequestTimeout as exc:  # the message says how to learn the outcome without placing it twice
            exc.details["idempotency_key"] = key
            raise
        order = parse(c.Order, raw, ORDERS_PLACE)
        if with_reason and order.failure_reason and order.saga is None:
            full = parse(c.Order, await cl.call(ORDERS_GET, {"order_id": order.order_id}), ORDERS_GET)
            order = order.model_copy(update={"saga": full.saga})
    return raw, order


@app.command()
def get(ctx: typer.Context, order_id: OrderIdArgument, output: OutputOption = None, as_json: JsonFlag = False) -> None:
    """Show one order with its saga: steps, attempts, last error."""
    settings = settings_of(ctx)
    cmd = command(c.GetOrder, {"order_id": "ORDER_ID"}, order_id=order_id)
    out = Output.of(output, as_json)
    read_and_show(settings, ORDERS_GET, cmd, c.Order, lambda order: views.order(order, with_saga=True), out)


ORDERS = listing.Listing(ORDERS_LIST, c.ListOrders, c.OrderList, "orders", "order_id", "order")


@app.command("list")
@listing.lists(
    ORDERS,
    {"status": "--status", "customer_id": "--customer"},
    lambda found, cursor: views.orders(found.orders, cursor),
)
def list_(
    ctx: typer.Context,
    status: Annotated[
        c.OrderStatus | None, typer.Option("--status", "-s", case_sensitive=False, help="Only this status.")
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", "-c", help="Only this customer's.")] = None,
) -> dict[str, Any]:
    """List orders, newest first; page with --before (the id a page ends with) or --all."""
    return {"status": status, "customer_id": customer}


@app.command()
def cancel(
    ctx: typer.Context,
    order_id: OrderIdArgument,
    reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why; kept with the order.")] = None,
    key: KeyOption = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel a PENDING or CONFIRMED order: its payment is voided and its stock released (a shipped order is
    returned instead: `oms order return`)."""
    settings = settings_of(ctx)
    cmd = command(c.CancelOrder, {"order_id": "ORDER_ID", "reason": "--reason"}, order_id=order_id, reason=reason)
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        raw = call(settings, ORDERS_CANCEL, cmd, key=key or str(uuid.uuid4()))
        order = parse(c.Order, raw, ORDERS_CANCEL)
    out.result(raw, views.order(order, with_saga=True))


WaitOption = Annotated[
    int | None,
    typer.Option(
        "--wait-ms",
        min=0,
        max=60_000,
        help=f"How long to wait for the outcome (default {DEFAULT_WAIT_MS}); the saga goes on after.",
    ),
]


@app.command()
def ship(
    ctx: typer.Context,
    order_id: OrderIdArgument,
    wait_ms: WaitOption = None,
    key: KeyOption = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Ship a CONFIRMED order (admin): its stock leaves and its payment is captured.

    Exit 1 when the shipment turned back (the order stays CONFIRMED and says why)."""
    settings = settings_of(ctx)
    cmd = command(c.ShipOrder, {"order_id": "ORDER_ID", "wait_ms": "--wait-ms"}, order_id=order_id, wait_ms=wait_ms)
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        raw = call(settings, ORDERS_SHIP, cmd, key=key or str(uuid.uuid4()), timeout_s=_waited(wait_ms))
        order = parse(c.Order, raw, ORDERS_SHIP)
    out.result(raw, views.order(order))
    if order.status == c.OrderStatus.SHIPPING:
        out.note(f"still shipping: `oms order get {order.order_id}` shows how it ends")
    raise typer.Exit(0 if order.status != c.OrderStatus.CONFIRMED else 1)


@app.command("return")
def return_(
    ctx: typer.Context,
    order_id: OrderIdArgument,
    item: Annotated[
        list[str] | None,
        typer.Option(
            "--item",
            "-i",
            metavar="SKU:QTY",
            help="Units to take back, e.g. KB-101:1; repeat for more lines (none: everything not yet returned).",
            autocompletion=completion.items,
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why; kept with the return.")] = None,
    wait_ms: WaitOption = None,
    key: KeyOption = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Take back units of a shipped order (admin): they return to stock (when resellable) and their value,
    at the unit prices paid, is refunded. Several returns add up to at most what shipped."""
    settings = settings_of(ctx)
    flags = {"order_id": "ORDER_ID", "items": "--item", "reason": "--reason", "wait_ms": "--wait-ms"}
    items = parse_items(item) if item else None
    cmd = command(c.ReturnOrder, flags, order_id=order_id, items=items, reason=reason, wait_ms=wait_ms)
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        raw = call(settings, ORDERS_RETURN, cmd, key=key or str(uuid.uuid4()), timeout_s=_waited(wait_ms))
        order = parse(c.Order, raw, ORDERS_RETURN)
    out.result(raw, views.order(order))
    if any(r.status == "RETURNING" for r in order.returns):
        out.note(f"a return is still under way: `oms order get {order.order_id}` shows how it ends")


def _waited(wait_ms: int | None) -> float:
    return (DEFAULT_WAIT_MS if wait_ms is None else wait_ms) / 1000 + PLACE_MARGIN_S


@app.command()
def events(
    ctx: typer.Context, order_id: OrderIdArgument, output: OutputOption = None, as_json: JsonFlag = False
) -> None:
    """Show an order's timeline across every service, from the event stream.

    Time, +ms from the first event, service, type, saga step and attempt, and the gist of each.
    """
    settings = settings_of(ctx)
    cmd = command(c.OrderEventsQuery, {"order_id": "ORDER_ID"}, order_id=order_id)
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        raw = call(settings, ORDERS_EVENTS, cmd)
        found = parse(c.EventList, raw, ORDERS_EVENTS)
    out.result(raw, timeline(found), items="events")
