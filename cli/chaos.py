"""`oms chaos`: set, show and clear fault injection on `chaos.<service>.set|get|clear` (operator)."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bus import contract as c
from bus.errors import OmsError
from bus.settings import SERVICES, Settings
from bus.subjects import Route, routes_of
from cli.connection import ADMIN
from cli.failures import exit_code, explain, reported
from cli.options import JsonFlag, OutputOption
from cli.output import Output
from cli.session import QUERY_TIMEOUT_S, client, command, parse, settings_of

app = typer.Typer(
    help="Fault injection (operator): make a service fail, slow down or lose replies; show and clear it.",
    no_args_is_help=True,
)

Service = StrEnum("Service", [(name, name) for name in SERVICES])

FLAGS = {
    "error_rate": "--error-rate",
    "latency_ms": "--latency-ms",
    "latency_jitter_ms": "--latency-jitter-ms",
    "drop_reply_rate": "--drop-reply-rate",
    "endpoints": "--endpoint",
    "seed": "--seed",
}
FAULTS = ("error_rate", "latency_ms", "latency_jitter_ms", "drop_reply_rate")


async def _ask(settings: Settings, services: list[str], verb: str, payload: c.Command) -> list[c.ChaosState | OmsError]:
    """`chaos.<service>.<verb>` of each service on one connection; a service that does not answer is its error."""
    answers: list[c.ChaosState | OmsError] = []
    async with client(settings, role=ADMIN) as cl:
        for name in services:
            route = chaos_route(name, verb)
            try:
                raw = await cl.call(route, payload, timeout_s=QUERY_TIMEOUT_S)
                answers.append(parse(c.ChaosState, raw, route))
            except OmsError as exc:
                exc.details.setdefault("service", name)
                answers.append(exc)
    return answers


def chaos_route(service: str, verb: str) -> Route:
    """`chaos.<service>.<verb>` (`bus.subjects.chaos_subject`) as a route; the runner serves it in every service."""
    return Route("chaos", f"{service}_{verb}", c.ChaosSet if verb == "set" else c.ChaosQuery, path=f"{service}.{verb}")


def _report(answers: list[c.ChaosState | OmsError], settings: Settings, out: Output) -> None:
    """The table (or JSON list), then each failure on stderr; the exit code of the worst failure."""
    states = [a for a in answers if isinstance(a, c.ChaosState)]
    failures = [a for a in answers if isinstance(a, OmsError)]
    raw: list[dict[str, Any]] = [
        a.model_dump(mode="json")
        if isinstance(a, c.ChaosState)
        else {"service": a.details["service"], "error": a.to_wire()}
        for a in answers
    ]
    out.result(raw, table(states, failures))
    err = Console(stderr=True, soft_wrap=True)
    for exc in failures:
        err.print(f"[bold red]error:[/] {exc.details['service']}: {escape(explain(exc, settings))}")
    if failures:
        raise typer.Exit(max(exit_code(exc) for exc in failures))


def table(states: list[c.ChaosState], failures: list[OmsError] | None = None) -> RenderableType:
    t = Table(title="Fault injection", title_justify="left")
    for column, justify in (
        ("Service", "left"),
        ("Faults", "left"),
        ("Error rate", "right"),
        ("Latency", "right"),
        ("Drop reply", "right"),
        ("Endpoints", "left"),
        ("Seed", "right"),
    ):
        t.add_column(column, justify=justify)
    for s in states:
        latency = f"{s.latency_ms} ms" + (f" +≤{s.latency_jitter_ms}" if s.latency_jitter_ms else "")
        t.add_row(
            s.service,
            Text("ACTIVE", style="bold yellow") if s.active else Text("none", style="green"),
            f"{s.error_rate:.0%}" if s.error_rate else "—",
            latency if s.latency_ms or s.latency_jitter_ms else "—",
            f"{s.drop_reply_rate:.0%}" if s.drop_reply_rate else "—",
            ", ".join(s.endpoints) if s.endpoints else "all",
            "—" if s.seed is None else str(s.seed),
        )
    for exc in failures or []:
        t.add_row(str(exc.details.get("service")), Text("not answering", style="bold red"), *("",) * 5)
    return t


def _targets(service: Service | None) -> list[str]:
    return [service.value] if service else list(SERVICES)


@app.command("set")
def set_(
    ctx: typer.Context,
    service: Annotated[Service, typer.Argument(metavar="SERVICE", help="The service to disturb.")],
    error_rate: Annotated[
        float | None, typer.Option("--error-rate", help="Share of requests refused with UNAVAILABLE, 0 to 1.")
    ] = None,
    latency_ms: Annotated[int | None, typer.Option("--latency-ms", help="Delay before each request, ms.")] = None,
    latency_jitter_ms: Annotated[
        int | None, typer.Option("--latency-jitter-ms", help="Up to this much more delay, at random, ms.")
    ] = None,
    drop_reply_rate: Annotated[
        float | None,
        typer.Option("--drop-reply-rate", help="Share of requests done and committed but never answered, 0 to 1."),
    ] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", "-e", help="Only this endpoint (e.g. reserve); repeat for more. Default: all."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Make the random choices reproducible.")] = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Set the faults of one service (replacing what was set). Rates are shares from 0 to 1."""
    settings = settings_of(ctx)
    faults = {"error_rate": error_rate, "latency_ms": latency_ms}
    faults |= {"latency_jitter_ms": latency_jitter_ms, "drop_reply_rate": drop_reply_rate}
    if all(v is None for v in faults.values()):
        raise typer.BadParameter(
            f"give at least one of {', '.join(FLAGS[f] for f in FAULTS)} (to remove faults: `oms chaos clear`)",
            param_hint="'SERVICE'",
        )
    known = sorted(r.name for r in routes_of(service.value))
    for name in endpoint or []:
        if name not in known:
            raise typer.BadParameter(
                f"{service.value} has no endpoint {name!r}; one of {', '.join(known)}", param_hint="'--endpoint'"
            )
    cmd = command(c.ChaosSet, FLAGS, **faults, endpoints=endpoint or None, seed=seed)
    out = Output.of(output, as_json)
    with reported(settings, as_json=out.as_json):
        answers = asyncio.run(_ask(settings, [service.value], "set", cmd))
    _report(answers, settings, out)


AnyServiceArgument = Annotated[
    Service | None, typer.Argument(metavar="SERVICE", help="One service; default all three.")
]


@app.command()
def show(
    ctx: typer.Context,
    service: AnyServiceArgument = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the faults in force. Exit 3 when a service does not answer."""
    _ask_all(settings_of(ctx), service, "get", Output.of(output, as_json))


@app.command()
def clear(
    ctx: typer.Context,
    service: AnyServiceArgument = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove every fault. Exit 3 when a service does not answer (its faults may still be in force)."""
    _ask_all(settings_of(ctx), service, "clear", Output.of(output, as_json))


def _ask_all(settings: Settings, service: Service | None, verb: str, out: Output) -> None:
    """`chaos.<service>.<verb>` with no arguments, to one service or all three, and the report."""
    with reported(settings, as_json=out.as_json):
        answers = asyncio.run(_ask(settings, _targets(service), verb, c.ChaosQuery()))
    _report(answers, settings, out)
