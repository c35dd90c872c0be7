"""`oms console [--port 8089] [--host 127.0.0.1] [--token T]`: serve the web console over the running stack."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from cli.console.security import is_loopback
from cli.failures import ExitCode
from cli.processes import port_busy
from cli.session import settings_of

app = typer.Typer()


@app.command()
def console(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The port to serve on.")] = 8089,
    host: Annotated[
        str, typer.Option("--host", help="The interface to bind; loopback unless given a token.")
    ] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="OMS_CONSOLE_TOKEN", help="Every request must carry it (needed off loopback)."),
    ] = None,
) -> None:
    """Serve a live web console of the running stack: orders, each of an order's sagas as a timeline, sagas with
    retry/abort/cancel for a signed-in operator, stock, services, breakers and the stream."""
    import uvicorn

    from cli.console.app import create_app

    err = Console(stderr=True, highlight=False)
    if not is_loopback(host) and not token:
        err.print(
            f"[bold red]error:[/] --host {host} is not loopback: give a --token (or OMS_CONSOLE_TOKEN) "
            "that every request must carry"
        )
        raise typer.Exit(ExitCode.USAGE)
    if token is not None and len(token) < 16:
        err.print("[bold red]error:[/] --token: at least 16 characters")
        raise typer.Exit(ExitCode.USAGE)
    if port_busy(host if host != "localhost" else "127.0.0.1", port):
        err.print(f"[bold red]error:[/] port {port} on {host} is in use: pick another with --port")
        raise typer.Exit(ExitCode.USAGE)
    settings = settings_of(ctx)
    shown = f"http://{host}:{port}/" + ("?token=…" if token else "")
    err.print(f"OMS console on {shown} (Ctrl-C stops it); reads as `cli`, actions need the admin user")
    config = uvicorn.Config(create_app(settings, token=token), host=host, port=port, log_level="warning", lifespan="on")
    uvicorn.Server(config).run()
