"""`oms inventory`: the catalog with its stock, and restocking."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from bus import contract as c
from bus.subjects import INVENTORY_RESERVATIONS, INVENTORY_RESTOCK, INVENTORY_STOCK
from cli import completion, listing, views
from cli.failures import reported
from cli.options import (
    JsonFlag,
    KeyOption,
    OutputOption,
    status_choices,
)
from cli.output import Output
from cli.session import call, command, parse, read_and_show, settings_of

app = typer.Typer(help="Look at the catalog and its stock, and reservations; restock.", no_args_is_help=True)

# Choices come from the contract.
ReservationStatus = status_choices("ReservationStatus", c.ReservationQuery)
RESERVATIONS = listing.Listing(
    INVENTORY_RESERVATIONS, c.ReservationQuery, c.ReservationList, "reservations", "order_id", "reservation"
)


@app.command()
def stock(
    ctx: typer.Context,
    sku: Annotated[
        str | None, typer.Option("--sku", metavar="SKU", help="Only this SKU.", autocompletion=completion.skus)
    ] = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show products with on hand, reserved and available units."""
    settings = settings_of(ctx)
    cmd = command(c.StockQuery, {"sku": "--sku"}, sku=sku.upper() if sku else None)
    out = Output.of(output, as_json)
    read_and_show(settings, INVENTORY_STOCK, cmd, c.Stock, lambda found: views.stock(found.products), out)


@app.command()
def restock(
    ctx: typer.Context,
    sku: Annotated[
        str,
        typer.Argument(
            metavar="SKU", help="The SKU; a new one needs --name and --price-cents.", autocompletion=completion.skus
        ),
    ],
    qty: Annotated[int, typer.Argument(metavar="QTY", min=1, max=1_000_000, help="Units to add.")],
    name: Annotated[str | None, typer.Option("--name", help="Product name (sets or renames).")] = None,
    price_cents: Annotated[
        int | None, typer.Option("--price-cents", min=0, help="Unit price in cents, e.g. 8900 for $89.00.")
    ] = None,
    key: KeyOption = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Add units of a product (creating it when it is new; operator: the admin user)."""
    settings = settings_of(ctx)
    cmd = command(
        c.Restock,
        {"sku": "SKU", "qty": "QTY", "name": "--name", "price_cents": "--price-cents"},
        sku=sku.upper(),
        qty=qty,
        name=name,
        price_cents=price_cents,
    )
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        raw = call(settings, INVENTORY_RESTOCK, cmd, key=key or str(uuid.uuid4()))
        product = parse(c.Product, raw, INVENTORY_RESTOCK)
    out.result(raw, views.stock([product]))


@app.command()
@listing.lists(
    RESERVATIONS,
    {"status": "--status", "order_id": "--order"},
    lambda found, cursor: views.reservations(found.reservations, cursor),
    page=50,
)
def reservations(
    ctx: typer.Context,
    status: Annotated[
        ReservationStatus | None,
        typer.Option("--status", "-s", case_sensitive=False, help="Only reservations in this state."),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            "--order", metavar="ORDER_ID", help="Only this order's reservation.", autocompletion=completion.order_ids
        ),
    ] = None,
) -> dict[str, Any]:
    """List reservations, newest order first (operator: the admin user); --before/--after are order ids.

    Inventory does not know customers, so there is no --customer: `oms order list --customer` has them.
    """
    return {"status": status.value if status else None, "order_id": order, "order": "desc"}
