"""`oms payment`: look at an order's payment."""

from __future__ import annotations

from typing import Annotated

import typer

from bus import contract as c
from bus.subjects import PAYMENT_GET
from cli import views
from cli.options import JsonFlag
from cli.session import command, read_and_show, settings_of

app = typer.Typer(help="Look at payments.", no_args_is_help=True)


@app.command()
def get(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(metavar="ORDER", help="The order id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show the payment of an order: status, amount, decline reason."""
    settings = settings_of(ctx)
    cmd = command(c.GetPayment, {"order_id": "ORDER"}, order_id=order_id)
    read_and_show(settings, PAYMENT_GET, cmd, c.Payment, views.payment, as_json=as_json)
