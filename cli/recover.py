"""`oms recover SERVICE`: rebuild a stopped service's database from OMS_EVENTS (bus.replay), with progress."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bus import contract as c
from bus.client import Client
from bus.errors import OmsError
from bus.replay import ReplayStats, rebuild
from bus.settings import SERVICES, Settings
from bus.subjects import HEALTH
from cli import stack
from cli.connection import ADMIN, connect_briefly
from cli.failures import Refused, reported
from cli.health import answers
from cli.options import JsonFlag, OutputOption
from cli.output import Output
from cli.processes import PACKAGES, Layout, is_ours, running_pid
from cli.session import config_of

if TYPE_CHECKING:
    from nats.aio.client import Client as Nats

    from bus.app import ServiceSpec

app = typer.Typer()

Service = StrEnum("Service", [(name, name) for name in SERVICES])


def spec_of(service: str) -> ServiceSpec:
    """The service's own definition (migrations and projection). Imported here only: the rest of the CLI
    speaks to services over NATS and never imports them."""
    return importlib.import_module(f"{PACKAGES[service]}.service").SPEC


def stop_first(service: str, why: str) -> Refused:
    return Refused(f"{service} {why}; rebuilding its database under it would lose work: stop it first: `oms down`")


def refuse_if_running(settings: Settings, service: str) -> None:
    """This home's pid file says the service runs."""
    pid = running_pid(settings, service)
    if pid is not None:
        raise stop_first(service, f"is running (pid {pid}) under {Layout.of(settings).home}")


async def refuse_if_answering(nc: Nats, settings: Settings, service: str) -> None:
    """A service of this home answers on NATS without a pid file (started by hand). On the embedded
    server every instance is this home's; on a shared one, only an instance whose process is ours counts."""
    if not await answers(nc, service):
        return
    if not settings.nats_url:
        raise stop_first(service, f"answers on {settings.resolved_nats_url()}")
    with contextlib.suppress(OmsError):  # an instance that cannot say its pid is not known to be ours
        health = await Client(nc, timeout_s=1.0).call(HEALTH[service], c.HealthQuery(), c.Health)
        if is_ours(Layout.of(settings), service, health.pid):
            raise stop_first(service, f"is running (pid {health.pid}) under {Layout.of(settings).home}")


@contextlib.contextmanager
def nats_for_recovery(settings: Settings, config: stack.StackSettings, note: Console) -> Iterator[None]:
    """The stream lives in this home's nats-server (or its cluster's nodes): start what is not running for
    the rebuild (and stop it again afterwards); with OMS_NATS_URL the named servers must be up."""
    if settings.nats_url or all(running_pid(settings, name) for name in stack.nats_names(settings)):
        yield
        return
    procs, url = stack.ensure_nats(settings, config)
    started = [p for p in procs if p.started]
    names = ", ".join(f"{p.name} (pid {p.pid})" for p in started)
    note.print(f"[dim]started {names} on {url} for the rebuild[/]")
    try:
        yield
    finally:
        # Only the servers started here: services of this home that run (and reconnected) stay up.
        stack.stop(settings, [p.name for p in started], config)
        note.print("[dim]stopped them again[/]")


class EventRate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} events/s" if task.speed else "", style="cyan")


async def rebuild_from_stream(settings: Settings, service: str, progress: Progress) -> ReplayStats:
    """Checks that nothing serves the service (as `admin`), then rebuilds it as the service's own NATS user:
    the stream lives in the services' account, and a rebuild reads it with consumers of its own."""
    spec = spec_of(service)
    nc = await connect_briefly(settings, "oms-recover-check", role=ADMIN)
    try:
        await refuse_if_answering(nc, settings, service)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    nc = await connect_briefly(settings, "oms-recover", role=service)
    try:
        task = progress.add_task(f"replaying {service} events", total=None)

        def advance(applied: int, total: int) -> None:
            progress.update(task, completed=applied, total=total)

        return await rebuild(settings, spec, nc.jetstream(), progress=advance)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def view(stats: ReplayStats, home: str) -> RenderableType:
    table = Table(title=f"{stats.service} rebuilt from the event stream ({home})", title_justify="left")
    for column in ("Events replayed", "Of", "Through seq", "Seconds", "Events/s"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{stats.applied:,}", f"{stats.total:,}", str(stats.last_seq), f"{stats.seconds:.2f}", f"{stats.rate:,.0f}"
    )
    table.caption = "start it with `oms up`: it resumes its unfinished sagas"
    return table


@app.command()
def recover(
    ctx: typer.Context,
    service: Annotated[Service, typer.Argument(metavar="SERVICE", help="The service whose database to rebuild.")],
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild a stopped service's database from the event stream.

    The rebuilt file replaces the old one only when all of it has committed; the old file stays if
    anything fails. The service must be stopped (`oms down`): exit 2 while it runs, 3 when the rebuild
    fails. nats-server is started for the rebuild (and stopped again) when it is not running.
    """
    config = config_of(ctx)
    layout = Layout.of(config.settings)
    settings = config.settings.model_copy(update={"home": layout.home})
    name = service.value
    out = Output.of(output, as_json)
    err = Console(stderr=True, highlight=False)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        EventRate(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=out.as_json or not err.is_terminal,
    )
    with reported(settings, as_json=out.as_json):
        refuse_if_running(settings, name)
        with nats_for_recovery(settings, config.stack, err), progress:
            stats = asyncio.run(rebuild_from_stream(settings, name, progress))
    out.result(stats.to_dict(), view(stats, str(layout.home)))
