"""`oms saga`: list and inspect the order service's sagas; retry one that waits (operator), or abort a running one."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from bus import contract as c
from bus.errors import RequestTimeout
from bus.settings import Settings
from bus.subjects import ORDERS_GET, SAGA_ABORT, SAGA_GET, SAGA_LIST, SAGA_RETRY, Route
from cli import completion, listing, views
from cli.connection import role_for
from cli.failures import reported
from cli.options import (
    JsonFlag,
    KeyOption,
    OutputOption,
    status_choices,
)
from cli.output import Output
from cli.session import client, command, parse, settings_of

app = typer.Typer(
    help="Sagas of the place-order flow: list, show, and (operator) retry or abort.", no_args_is_help=True
)

# Choices come from the contract.
SagaStatus = status_choices("SagaStatus", c.SagaQuery)

IdArgument = Annotated[
    str,
    typer.Argument(
        metavar="SAGA_ID",
        help="A saga id (saga_…), or the id of its order (ord_…).",
        autocompletion=completion.saga_ids,
    ),
]
ID_FLAGS = {"saga_id": "SAGA_ID", "reason": "--reason"}
# Abort waits (up to 10 s in the service) for the compensation to finish before it answers.
ABORT_TIMEOUT_S = 15.0


async def _on_saga(
    settings: Settings,
    ident: str,
    route: Route,
    build: type[BaseModel],
    fields: dict[str, Any],
    key: str | None,
    timeout_s: float | None,
) -> dict[str, Any]:
    """Call `route` for the saga `ident` names; an order id is looked up first (its saga is in the order)."""
    async with client(settings, role=role_for(route)) as cl:
        saga_id = ident
        if ident.startswith("ord_"):
            order = parse(c.Order, await cl.call(ORDERS_GET, {"order_id": ident}), ORDERS_GET)
            if order.saga is not None:
                saga_id = order.saga.saga_id
        cmd = command(build, ID_FLAGS, saga_id=saga_id, **fields)
        try:
            return await cl.call(route, cmd, timeout_s=timeout_s, idempotency_key=key)
        except RequestTimeout as exc:
            if key:  # so the message says how to learn the outcome without acting twice
                exc.details["idempotency_key"] = key
            raise


def _run(
    ctx: typer.Context,
    ident: str,
    route: Route,
    build: type[BaseModel],
    out: Output,
    *,
    fields: dict[str, Any] | None = None,
    key: str | None = None,
    timeout_s: float | None = None,
) -> None:
    settings = settings_of(ctx)
    fields = fields or {}
    command(build, ID_FLAGS, saga_id=ident, **fields)  # usage errors before connecting (order ids fit too)
    with reported(settings, as_json=out.as_json):
        raw = asyncio.run(_on_saga(settings, ident, route, build, fields, key, timeout_s))
        view = parse(c.SagaView, raw, route)
    out.result(raw, views.saga(view), items="steps")
    if key:
        out.note(f"[dim]idempotency key {key}[/]")


SAGAS = listing.Listing(SAGA_LIST, c.SagaQuery, c.SagaList, "sagas", "saga_id", "saga")


@app.command("list")
@listing.lists(
    SAGAS,
    {"status": "--status", "stuck": "--stuck", "customer_id": "--customer"},
    lambda found, cursor: views.sagas(found.sagas, cursor),
)
def list_(
    ctx: typer.Context,
    status: Annotated[
        SagaStatus | None, typer.Option("--status", "-s", case_sensitive=False, help="Only sagas in this state.")
    ] = None,
    stuck: Annotated[
        bool,
        typer.Option(
            "--stuck",
            help="Only sagas whose compensation keeps failing (retry them: a compensation is never given up).",
        ),
    ] = False,
    customer: Annotated[
        str | None, typer.Option("--customer", "-c", help="Only the sagas of this customer's orders.")
    ] = None,
) -> dict[str, Any]:
    """List sagas, newest first: status, failure, current step, attempts, created, next retry, deadline."""
    return {"status": status.value if status else None, "stuck": stuck, "customer_id": customer}


@app.command()
def show(ctx: typer.Context, ident: IdArgument, output: OutputOption = None, as_json: JsonFlag = False) -> None:
    """Show one saga step by step, like `dbos workflow steps`.

    Each step and compensation in the order it ran: status, attempts, when it started and finished, how
    long it took, whether its outcome is uncertain, its last error; then where the saga stands. `--output
    jsonl` prints one line per step.
    """
    _run(ctx, ident, SAGA_GET, c.SagaRef, Output.of(output, as_json))


@app.command()
def retry(
    ctx: typer.Context, ident: IdArgument, key: KeyOption = None, output: OutputOption = None, as_json: JsonFlag = False
) -> None:
    """Make a running or compensating saga try again now.

    It tries its current step (or compensation) at once instead of waiting for its next retry.
    Exit 1 when the saga has already ended (CONFLICT) or is unknown.
    """
    _run(ctx, ident, SAGA_RETRY, c.SagaRef, Output.of(output, as_json), key=key or str(uuid.uuid4()))


@app.command()
def abort(
    ctx: typer.Context,
    ident: IdArgument,
    reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why; for the operator's record.")] = None,
    key: KeyOption = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Stop a running saga: what it did is undone and its order fails.

    Completed steps are compensated in reverse order and the order ends FAILED with reason ABORTED.
    Exit 1 when the saga is not running (CONFLICT) or unknown.
    """
    _run(
        ctx,
        ident,
        SAGA_ABORT,
        c.SagaAbort,
        Output.of(output, as_json),
        fields={"reason": reason},
        key=key or str(uuid.uuid4()),
        timeout_s=ABORT_TIMEOUT_S,
    )
