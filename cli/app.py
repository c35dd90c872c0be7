"""The `oms` Typer app: one sub-app per module, composed here; settings are read once, here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import typer.core
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from bus import __version__
from bus.contract import API_VERSION
from bus.settings import Settings
from cli import (
    audit,
    chaos,
    demo,
    events,
    inventory,
    lifecycle,
    load,
    logs,
    metrics,
    orders,
    payment,
    recover,
    saga,
    schema,
)
from cli.console import command as console_command
from cli.failures import ExitCode
from cli.session import Config
from cli.stack import StackSettings

# Typer shows a `<bool>` type beside every flag (--json, --help): a flag takes no value, so it shows none.
_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _display_type(self, ctx)

app = typer.Typer(
    name="oms",
    help="OMS: orders, inventory and payment on NATS. Start with `oms up` (or `oms demo`).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",  # a docstring's paragraphs reflow; lists and `code` read as such
)
app.add_typer(lifecycle.app)
app.add_typer(orders.app, name="order")
app.add_typer(inventory.app, name="inventory")
app.add_typer(payment.app, name="payment")
app.add_typer(saga.app, name="saga")
app.add_typer(chaos.app, name="chaos")
app.add_typer(events.app, name="events")
app.add_typer(audit.app)
app.add_typer(recover.app)
app.add_typer(logs.app)
app.add_typer(metrics.app)
app.add_typer(demo.app)
app.add_typer(schema.app)
app.add_typer(load.app)
app.add_typer(console_command.app)


def _version(asked: bool) -> None:
    if asked:
        print(f"oms {__version__} (contract api {API_VERSION})")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option("--home", help="OMS_HOME: data, logs and pids (default ./.oms).")] = None,
    nats_url: Annotated[
        str | None,
        typer.Option("--nats-url", help="OMS_NATS_URL: use this server instead of the embedded one."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_version, help="Print the version and the contract's, and exit."
        ),
    ] = False,
) -> None:
    overrides = {k: v for k, v in (("home", home), ("nats_url", nats_url)) if v is not None}
    try:
        ctx.obj = Config(Settings(**overrides), StackSettings())
    except ValidationError as exc:
        problems = "; ".join(
            f"OMS_{'__'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] bad configuration: {escape(problems)}")
        raise typer.Exit(ExitCode.USAGE) from None


def main() -> None:
    # Connection notices (e.g. "nats disconnected" when the CLI closes) are for services' logs.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    app()
