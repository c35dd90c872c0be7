"""`oms load`: place many orders fast, watch them live, then show throughput, latency and the audit."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bus import loop
from bus.audit import Report, run_audit
from bus.client import Client
from bus.settings import Settings
from bus.stream import jetstream
from cli.connection import ADMIN, connect_briefly
from cli.failures import ExitCode, reported
from cli.loadgen import LoadPlan, LoadResult, Mix, ensure_stock, run_load
from cli.options import JsonFlag, OutputOption
from cli.output import Output
from cli.session import settings_of
from cli.tables import Col, FitTable

app = typer.Typer()


def _mix(text: str) -> Mix:
    try:
        return Mix.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--mix'") from None


@app.command()
def load(
    ctx: typer.Context,
    orders: Annotated[int, typer.Option("--orders", "-n", min=1, max=10_000_000, help="How many orders.")] = 1000,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=10_000, help="Orders in flight at once.")
    ] = 64,
    rate: Annotated[
        float | None, typer.Option("--rate", "-r", min=0.1, help="Place at this many orders/s instead.")
    ] = None,
    mix: Annotated[
        str,
        typer.Option(
            "--mix",
            help="Shares, e.g. declined=0.1,out_of_stock=0.05,shipped=0.2,returned=0.05 (ships and returns as admin).",
        ),
    ] = "",
    max_seconds: Annotated[
        float, typer.Option("--max-seconds", min=1, help="Stop sending after this long, whatever is left.")
    ] = 600.0,
    connections: Annotated[int, typer.Option("--connections", min=1, max=64, help="NATS connections.")] = 4,
    restock: Annotated[
        bool,
        typer.Option(
            "--restock", help="First top up the SKUs it orders (as admin) so that no ok order runs out of stock."
        ),
    ] = False,
    audit: Annotated[bool, typer.Option("--audit/--no-audit", help="Run the invariant audit at the end.")] = True,
    seed: Annotated[int | None, typer.Option("--seed", help="Make the mix reproducible.")] = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Place many orders (unique customers and keys) and report sagas/s, latency and outcomes.

    It orders the stock there is: with more orders than units, some end OUT_OF_STOCK. --restock tops the
    SKUs up first, and says by how much.
    """
    settings = settings_of(ctx)
    plan = LoadPlan(
        orders=orders,
        concurrency=concurrency,
        rate=rate,
        mix=_mix(mix),
        max_seconds=max_seconds,
        connections=connections,
        seed=seed,
    )
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        result, report, restocked = loop.run(_load(settings, plan, restock=restock, audit=audit, show=not out.as_json))
    summary = result.to_dict() | {"restocked": restocked}
    if report is not None:
        summary["audit"] = report.to_dict()
    out.result(summary, *results(result), *([audit_table(report)] if report else []))
    if report is not None and not report.ok:
        raise typer.Exit(ExitCode.FAILED)


async def _load(
    settings: Settings, plan: LoadPlan, *, restock: bool, audit: bool, show: bool
) -> tuple[LoadResult, Report | None, dict[str, int] | None]:
    notes = Console(stderr=True, highlight=False) if show else None
    restocked = None
    if restock:
        nc = await connect_briefly(settings, "oms-load", role=ADMIN)
        try:
            restocked = await ensure_stock(Client(nc, timeout_s=10), plan)
        finally:
            await nc.close()
        if notes:
            added = ", ".join(f"{sku} +{qty:,}" for sku, qty in restocked.items()) or "nothing: there was enough"
            notes.print(f"restocked {added}")
    elif notes:
        notes.print("[dim]ordering the stock there is (--restock tops it up first)[/]")
    with Progress(
        TextColumn("[bold]placing orders"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f}/s"),
        TextColumn("{task.fields[outcomes]}"),
        TimeElapsedColumn(),
        disable=not show,
        transient=False,
    ) as progress:
        task = progress.add_task("load", total=plan.orders, rate=0.0, outcomes="")
        clock = asyncio.get_running_loop()
        started = clock.time()

        def update(r: LoadResult) -> None:
            done = r.completed + sum(r.errors.values())
            if done % 50 and done != plan.orders:
                return
            elapsed = max(clock.time() - started, 1e-9)
            counts = " ".join(f"{k.lower()}={v}" for k, v in sorted((r.outcomes + r.errors).items()))
            progress.update(task, completed=done, rate=r.terminal / elapsed, outcomes=counts)

        result = await run_load(settings, plan, on_progress=update)
        update(result)
    report = None
    if audit:
        nc = await connect_briefly(settings, "oms-audit", role=ADMIN)
        try:
            js = await jetstream(nc, settings.stream_name)
            report = await run_audit(Client(nc, timeout_s=15), js, settings.stream_name, settings.saga)
        finally:
            await nc.close()
    return result, report, restocked


def results(r: LoadResult) -> tuple[Text, Table]:
    """The title on a line of its own (a table's title wraps at the table's width), then the figures."""
    return Text(f"load: {r.completed} of {r.planned} orders in {r.seconds:.1f}s", style="bold"), results_table(r)


def results_table(r: LoadResult) -> Table:
    d = r.to_dict()
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("completed sagas/s", f"{d['sagas_per_s']:.0f}")
    for name, value in d["latency_ms"].items():
        table.add_row(f"latency {name}", f"{value:.1f} ms")
    for status, n in sorted(r.outcomes.items()):
        table.add_row(f"outcome {status}", str(n))
    since = " (since the order service restarted)" if r.counts_since_restart else ""
    table.add_row(f"step retries{since}", str(d["retries"]))
    table.add_row(f"compensations{since}", str(d["compensations"]))
    for code, n in sorted(r.errors.items()):
        table.add_row(f"error {code}", str(n))
    if r.stopped_early:
        table.add_row("stopped early", f"{r.planned - r.sent} not sent (--max-seconds)")
    return table


def audit_table(report: Report) -> FitTable:
    table = FitTable(
        [
            Col("Invariant", fold=True, min_fold=24),
            Col("Checked", justify="right"),
            Col("Violations", justify="right"),
            Col("Offending", fold=True, drop=1, min_fold=16),
        ],
        title=f"audit: {'clean' if report.ok else f'{report.violations} violations'}",
    )
    for check in report.checks:
        bad = len(check.violations)
        table.add_row(
            f"{check.number}. {check.name}",
            str(check.checked),
            Text(str(bad), style="bold red" if bad else ""),
            Text("; ".join(check.violations[:3]), style="red"),
        )
    return table
