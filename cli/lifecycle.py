"""`oms up`, `oms down`, `oms status`: the local stack of nats-server and services under OMS_HOME."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from bus.settings import SERVICES, Settings
from cli import stack, views
from cli.failures import ExitCode, reported
from cli.options import JsonFlag
from cli.output import Output, plain
from cli.session import config_of

app = typer.Typer()


@app.command()
def up(
    ctx: typer.Context,
    foreground: Annotated[
        bool, typer.Option("--foreground", "-f", help="Stay attached; Ctrl-C stops everything.")
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
    as_json: JsonFlag = False,
) -> None:
    """Start nats-server (unless OMS_NATS_URL is set), or the home's cluster, and the services that are not
    running."""
    config = config_of(ctx)
    settings = config.settings
    out = Output(as_json)
    if not foreground:
        with reported(settings, as_json=as_json):
            started = asyncio.run(stack.up(settings, config.stack, cluster_size=cluster))
        out.result(plain(started), views.stack_up(started, stack.Layout.of(settings).home))
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with reported(settings, as_json=as_json):
            started = asyncio.run(stack.up(settings, config.stack, cluster_size=cluster))
        out.result(plain(started), views.stack_up(started, stack.Layout.of(settings).home))
        out.note("[dim]attached: Ctrl-C stops everything[/]")
        _watch(settings, out)
    except KeyboardInterrupt:
        out.note("stopping…")
    finally:
        with stack.signals_held():
            stopped = stack.down(settings, config.stack)
        signal.signal(signal.SIGTERM, previous)
        out.result(plain(stopped), views.stack_down(stopped))


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def _watch(settings: Settings, out: Output) -> None:
    """Until interrupted: say when a service stops on its own (with the end of its log)."""
    layout = stack.Layout.of(settings)
    alive = {name for name in SERVICES if stack.running_pid(settings, name)}
    offsets = {name: _size(layout.log_file(name)) for name in alive}
    while True:
        time.sleep(0.5)
        for name in sorted(alive):
            if stack.running_pid(settings, name) is None:
                alive.discard(name)
                tail = stack.log_tail(layout.log_file(name), offsets[name], lines=10)
                out.note(f"[bold red]{name} stopped[/]; `oms up` starts it again\n{escape(tail)}")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


@app.command()
def down(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Stop the services, then nats-server (SIGTERM, SIGKILL after a timeout)."""
    config = config_of(ctx)
    stopped = stack.down(config.settings, config.stack)
    Output(as_json).result(plain(stopped), views.stack_down(stopped))


@app.command()
def status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show each service, NATS and the event stream; exit 3 unless every service answers.

    Per service: process, version, uptime, requests, errors, and from `<service>.health` the outbox
    backlog, sagas in flight, circuit breakers (orders) and the faults injected.
    """
    current = asyncio.run(stack.status(config_of(ctx).settings))
    Output(as_json).result({**plain(current), "healthy": current.healthy}, views.stack_status(current))
    raise typer.Exit(ExitCode.OK if current.healthy else ExitCode.UNAVAILABLE)
