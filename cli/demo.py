"""`oms demo`: a throwaway stack in a temporary OMS_HOME, then the guided tour of `cli.scenes`.

A scene is data: (name, one line saying what it shows, async function of a Stage); `Stage.expect`
records whether the scene showed what it set out to, and a miss makes the demo exit 1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bus.natsserver import free_port
from bus.settings import SERVICES, Settings
from cli import session, stack
from cli.connection import ADMIN
from cli.failures import ExitCode, reported
from cli.options import JsonFlag
from cli.output import Output
from cli.scenes import SCENES, Scene
from cli.session import config_of
from cli.stage import Stage

app = typer.Typer()


# -- the command ----------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    scene: Annotated[str | None, typer.Argument(help="Run only this scene (see --list).")] = None,
    list_scenes: Annotated[bool, typer.Option("--list", help="List the scenes and exit.")] = False,
    step: Annotated[bool, typer.Option("--step", help="Pause for Enter between scenes.")] = False,
    cluster: Annotated[
        int,
        typer.Option(
            "--cluster", metavar="N", min=1, max=7, help="nats-servers in the demo's cluster (1: one server)."
        ),
    ] = 3,
    as_json: JsonFlag = False,
) -> None:
    """Start a throwaway stack in a temporary OMS_HOME, play the scenes, stop it and clean up."""
    out = Output(as_json)
    if list_scenes:
        table = Table("Scene", "What it shows")
        for s in SCENES:
            table.add_row(s.name, s.description)
        out.result([{"name": s.name, "description": s.description} for s in SCENES], table)
        return
    chosen = _select(scene)
    config = config_of(ctx)
    home = Path(tempfile.mkdtemp(prefix="oms-demo-"))
    settings = demo_settings(config.settings, home)
    stack_settings = config.stack.model_copy(update={"nats_port": 0})  # any free port
    problems: list[str] = []
    try:
        with reported(settings, as_json=as_json):
            problems = asyncio.run(play(settings, stack_settings, chosen, out, step=step, cluster=cluster))
    finally:
        with stack.signals_held():
            stack.down(settings, stack_settings)
            shutil.rmtree(home, ignore_errors=True)
        out.note("[dim]stopped the demo stack and removed its home[/]")
    if not problems and not as_json:
        out.note("to watch a stack of your own: `oms up`, then `oms console` and open http://127.0.0.1:8089/")
    if problems:
        out.note("[bold red]the demo did not show everything it meant to:[/]\n  " + "\n  ".join(problems))
    raise typer.Exit(ExitCode.FAILED if problems else ExitCode.OK)


def _select(name: str | None) -> list[Scene]:
    if name is None:
        return list(SCENES)
    for s in SCENES:
        if s.name == name:
            return [s]
    names = ", ".join(s.name for s in SCENES)
    raise typer.BadParameter(f"no scene {name!r}; one of: {names}", param_hint="'SCENE'")


# Short timeouts so that faults play out in seconds; the services read them from the environment.
DEMO_ENV = {
    "OMS_SAGA__STEP_TIMEOUT_MS": "1000",
    "OMS_SAGA__RETRY_MAX_INTERVAL_MS": "500",
    "OMS_SAGA__RETRY_MAX_ATTEMPTS": "40",
    "OMS_BREAKER__THRESHOLD": "3",
    "OMS_BREAKER__TTL_MS": "1000",
}


def demo_settings(base: Settings, home: Path) -> Settings:
    """The demo's own home, embedded server and free metrics ports: never in the way of `oms up`."""
    os.environ.update(DEMO_ENV)  # inherited by the services the demo starts
    ports = {f"metrics_port_{name}": free_port() for name in SERVICES}
    tuned = Settings(home=home, **ports)
    return base.model_copy(
        update={
            "home": home,
            "nats_url": None,
            "nats_user": None,
            "nats_password": None,
            "saga": tuned.saga,
            "breaker": tuned.breaker,
            **ports,
        }
    )


async def play(
    settings: Settings,
    stack_settings: stack.StackSettings,
    scenes: list[Scene],
    out: Output,
    *,
    step: bool = False,
    cluster: int = 3,
) -> list[str]:
    """Start the stack, run the scenes; the problems they found (the caller stops the stack)."""
    where = f"a cluster of {cluster} nats-servers" if cluster > 1 else "one nats-server"
    out.note(f"Starting a throwaway OMS on {where} in {settings.home} …")
    started = await stack.up(settings, stack_settings, cluster_size=cluster)
    out.note(f"[dim]nats on {started.url}; {', '.join(SERVICES)} answer[/]")
    problems: list[str] = []
    async with session.client(settings) as client, session.client(settings, role=ADMIN) as admin:
        stage = Stage(settings, client, admin, out)
        for number, scene in enumerate(scenes, start=1):
            if step and number > 1 and not out.as_json:
                await asyncio.to_thread(input, "press Enter for the next scene ")
            if not out.as_json:
                out.console.rule(f"[bold]{number}. {scene.name}[/]: {scene.description}", align="left")
            stage.scene = scene.name
            await scene.run(stage)
        problems = stage.problems
    return problems
