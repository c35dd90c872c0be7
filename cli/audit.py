"""`oms audit`: check the system's invariants against all three services and the event stream."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import typer
from nats.js.errors import NotFoundError
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bus.audit import Report, run_audit
from bus.client import Client
from bus.errors import Unavailable
from bus.settings import Settings
from bus.stream import jetstream
from cli.connection import ADMIN, connect_briefly
from cli.failures import ExitCode, reported
from cli.options import JsonFlag, OutputOption
from cli.output import Output
from cli.session import settings_of

app = typer.Typer()

SHOWN = 3  # offending ids per invariant in the table; --json lists more
AUDIT_TIMEOUT_S = 15.0  # per request; the audit pages through every order, reservation and payment


async def audit_once(settings: Settings) -> Report:
    """`bus.audit.run_audit` on a connection of its own; JetStream trouble is UNAVAILABLE."""
    nc = await connect_briefly(settings, "oms-audit", role=ADMIN)
    try:
        return await run_audit(
            Client(nc, timeout_s=AUDIT_TIMEOUT_S),
            await jetstream(nc, settings.stream_name),
            settings.stream_name,
            settings.saga,
        )
    except NotFoundError:
        raise Unavailable(
            f"stream {settings.stream_name} not found: the services create it when they start (`oms up`)"
        ) from None
    except nats.errors.TimeoutError:
        raise Unavailable(
            f"reading {settings.stream_name} timed out: is JetStream overloaded? see `oms status`"
        ) from None
    except nats.errors.Error as exc:
        raise Unavailable(f"cannot read {settings.stream_name}: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def view(report: Report) -> RenderableType:
    table = Table(title="Invariants", title_justify="left")
    for column, justify in (("#", "right"), ("Invariant", "left"), ("Checked", "right"), ("Violations", "right")):
        table.add_column(column, justify=justify)
    table.add_column("Offending (first few)")
    for check in report.checks:
        bad = len(check.violations)
        offending = "\n".join(check.violations[:SHOWN]) + (f"\n… and {bad - SHOWN} more" if bad > SHOWN else "")
        table.add_row(
            str(check.number),
            check.name,
            str(check.checked),
            Text(str(bad), style="bold red" if bad else "green"),
            Text(offending, style="red"),
        )
    scope = f"{len(report.checks)} invariants over {report.orders} orders and {report.events} events"
    if report.ok:
        summary = Text.from_markup(f"[bold green]✓ all hold[/]: {scope}")
    else:
        broken = sum(1 for check in report.checks if check.violations)
        summary = Text.from_markup(
            f"[bold red]✗ {report.violations} violation(s) of {broken} invariant(s)[/]: {escape(scope)}"
        )
    return Group(table, summary)


@app.command()
def audit(ctx: typer.Context, output: OutputOption = None, as_json: JsonFlag = False) -> None:
    """Check the system's invariants over the three services and the event stream; exit 1 when any is violated.

    1. No SKU is oversold: reserved is the sum of its active reservations, available never below 0, and on_hand
    moves only by restocks, commits (shipments) and returns put back on hand.
    2. A confirmed order has one active reservation of its lines and one authorized payment of its total; a
    shipped one a committed reservation and a capture of its total, and captured minus refunded is the value
    of its shipped lines not returned.
    3. A failed or cancelled order holds no reservation and no net charge.
    4. Once quiet, no order stays PENDING or COMPENSATING past its deadline and the retry cap, nor SHIPPING past
    its shipment's.
    5. One idempotency key makes one order and at most one charge.
    6. Every state change has its event in the stream, exactly once, and the stream holds nothing else.
    """
    settings = settings_of(ctx)
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        with Console(stderr=True).status("auditing: orders, stock, reservations, payments and the event stream…"):
            report = asyncio.run(audit_once(settings))
    out.result(report.to_dict(), view(report), items="checks")
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.FAILED)
