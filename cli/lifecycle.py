"""`oms up`, `oms down`, `oms status`: the local stack of nats-server and services under OMS_HOME."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from bus.settings import SERVICES, Settings
from cli import stack, views
from cli.failures import ExitCode, reported
from cli.logs import LogFile, readable
from cli.options import JsonFlag, OutputOption
from cli.output import Output, plain
from cli.session import config_of

app = typer.Typer()


@app.command()
def up(
    ctx: typer.Context,
    foreground: Annotated[
        bool,
        typer.Option(
            "--foreground", "-f", help="Stay attached and stream the services' logs; Ctrl-C stops everything."
        ),
    ] = False,
    cluster: Annotated[
        int | None,
        typer.Option(
            "--cluster",
            metavar="N",
            min=1,
            max=7,
            help="Run N nats-servers on loopback as one cluster, the event stream on 3 of them (1: one server). "
            "Fixed when a home is first started.",
        ),
    ] = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Start nats-server (unless OMS_NATS_URL is set), or the home's cluster, and the services that are not
    running. With -f, stay attached like `docker compose up`: every service's log lines as they come."""
    config = config_of(ctx)
    settings = config.settings
    out = Output.of(output, as_json)
    if not foreground:
        with reported(settings, as_json=out.as_json):
            started = asyncio.run(stack.up(settings, config.stack, cluster_size=cluster))
        out.result(plain(started), views.stack_up(started, stack.Layout.of(settings).home))
        return
    layout = stack.Layout.of(settings)
    logs = {name: LogFile(name, layout.log_file(name)) for name in SERVICES}
    for log in logs.values():  # from here on: what this start writes, as `docker compose up` shows it
        log.offset = _size(log.path)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with reported(settings, as_json=out.as_json):
            started = asyncio.run(stack.up(settings, config.stack, cluster_size=cluster))
        out.result(plain(started), views.stack_up(started, layout.home))
        out.note("[dim]attached: the services' logs follow; Ctrl-C stops everything[/]")
        _watch(settings, out, logs)
    except KeyboardInterrupt:
        out.note("stopping…")
    finally:
        with stack.signals_held():
            stopped = stack.down(settings, config.stack)
        signal.signal(signal.SIGTERM, previous)
        out.result(plain(stopped), views.stack_down(stopped))


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def _watch(settings: Settings, out: Output, logs: dict[str, LogFile]) -> None:
    """Until interrupted: print each service's new log lines (as JSON lines with --output json/jsonl), and
    say when a service stops on its own."""
    alive = {name for name in SERVICES if stack.running_pid(settings, name)}
    while True:
        lines = sorted((line for log in logs.values() for line in log.read()), key=lambda line: line.ts)
        for line in lines:
            if out.as_json:
                out.json(line.record or {"service": line.source, "raw": line.text}, line=True)
            else:
                out.console.print(readable(line), soft_wrap=True)
        for name in sorted(alive):
            if stack.running_pid(settings, name) is None:
                alive.discard(name)
                out.note(f"[bold red]{name} stopped[/]; `oms up` starts it again")
        time.sleep(0.25)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


@app.command()
def down(ctx: typer.Context, output: OutputOption = None, as_json: JsonFlag = False) -> None:
    """Stop the services, then nats-server (SIGTERM, SIGKILL after a timeout)."""
    config = config_of(ctx)
    stopped = stack.down(config.settings, config.stack)
    Output.of(output, as_json).result(plain(stopped), views.stack_down(stopped))


@app.command()
def status(ctx: typer.Context, output: OutputOption = None, as_json: JsonFlag = False) -> None:
    """Show each service, NATS and the event stream; exit 3 unless every service answers.

    Per service: process, version, uptime, requests, errors, and from `<service>.health` the outbox
    backlog, sagas in flight, circuit breakers (orders) and the faults injected (health answers whatever
    faults are set); the contract's version each service speaks (API).
    """
    current = asyncio.run(stack.status(config_of(ctx).settings))
    Output.of(output, as_json).result({**plain(current), "healthy": current.healthy}, views.stack_status(current))
    raise typer.Exit(ExitCode.OK if current.healthy else ExitCode.UNAVAILABLE)
