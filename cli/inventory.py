"""`oms inventory`: the catalog with its stock, and restocking."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from bus import contract as c
from bus.subjects import INVENTORY_RESTOCK, INVENTORY_STOCK
from cli import views
from cli.failures import reported
from cli.options import JsonFlag, KeyOption
from cli.output import Output
from cli.session import call, command, parse, read_and_show, settings_of

app = typer.Typer(help="Look at the catalog and its stock; restock.", no_args_is_help=True)


@app.command()
def stock(
    ctx: typer.Context,
    sku: Annotated[str | None, typer.Option("--sku", help="Only this SKU.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show products with on hand, reserved and available units."""
    settings = settings_of(ctx)
    cmd = command(c.StockQuery, {"sku": "--sku"}, sku=sku.upper() if sku else None)
    read_and_show(settings, INVENTORY_STOCK, cmd, c.Stock, lambda found: views.stock(found.products), as_json=as_json)


@app.command()
def restock(
    ctx: typer.Context,
    sku: Annotated[str, typer.Argument(help="The SKU; a new one needs --name and --price-cents.")],
    qty: Annotated[int, typer.Argument(min=1, help="Units to add.")],
    name: Annotated[str | None, typer.Option("--name", help="Product name (sets or renames).")] = None,
    price_cents: Annotated[
        int | None, typer.Option("--price-cents", min=0, help="Unit price in cents, e.g. 8900 for $89.00.")
    ] = None,
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Add units of a product (creating it when it is new)."""
    settings = settings_of(ctx)
    cmd = command(
        c.Restock,
        {"sku": "SKU", "qty": "QTY", "name": "--name", "price_cents": "--price-cents"},
        sku=sku.upper(),
        qty=qty,
        name=name,
        price_cents=price_cents,
    )
    with reported(settings, as_json=as_json):
        raw = call(settings, INVENTORY_RESTOCK, cmd, key=key or str(uuid.uuid4()))
        product = parse(c.Product, raw, INVENTORY_RESTOCK)
    Output(as_json).result(raw, views.stock([product]))
