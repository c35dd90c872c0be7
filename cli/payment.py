"""`oms payment`: an order's payment, and the list of payments (an operator's)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bus import contract as c
from bus.subjects import PAYMENT_GET, PAYMENT_LIST
from cli import listing, views
from cli.options import (
    JsonFlag,
    OrderIdArgument,
    OutputOption,
    status_choices,
)
from cli.output import Output
from cli.session import command, read_and_show, settings_of

app = typer.Typer(help="Look at payments.", no_args_is_help=True)

# Choices come from the contract.
PaymentStatus = status_choices("PaymentStatus", c.PaymentQuery)
PAYMENTS = listing.Listing(PAYMENT_LIST, c.PaymentQuery, c.PaymentList, "payments", "order_id", "payment")


@app.command()
def get(ctx: typer.Context, order_id: OrderIdArgument, output: OutputOption = None, as_json: JsonFlag = False) -> None:
    """Show the payment of an order: status, amount, decline reason."""
    settings = settings_of(ctx)
    cmd = command(c.GetPayment, {"order_id": "ORDER_ID"}, order_id=order_id)
    read_and_show(settings, PAYMENT_GET, cmd, c.Payment, views.payment, Output.of(output, as_json))


@app.command("list")
@listing.lists(
    PAYMENTS,
    {"status": "--status", "customer_id": "--customer"},
    lambda found, cursor: views.payments(found.payments, cursor),
    page=50,
)
def list_(
    ctx: typer.Context,
    status: Annotated[
        PaymentStatus | None,
        typer.Option("--status", "-s", case_sensitive=False, help="Only payments in this state."),
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", "-c", help="Only this customer's.")] = None,
) -> dict[str, Any]:
    """List payments, newest order first (operator: the admin user); --before/--after are order ids."""
    return {"status": status.value if status else None, "customer_id": customer, "order": "desc"}
