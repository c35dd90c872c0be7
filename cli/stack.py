"""The embedded stack: `up` starts nats-server (unless OMS_NATS_URL is set) and the services as
child processes under OMS_HOME and waits until each answers; `down` stops them; `status` reports.

The embedded nats-server runs with least privilege (`bus.auth`): `up` writes OMS_HOME/nats.conf and
the users' credentials under OMS_HOME/credentials once, and hands each service its own user and
password through OMS_NATS_USER / OMS_NATS_PASSWORD. With OMS_NATS_URL, the services inherit
OMS_NATS_USER / OMS_NATS_PASSWORD from the environment and no configuration is written.

Files and process identity: `cli.processes`. What `status` asks the services: `cli.health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as Nats
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus import auth, natsserver
from bus.errors import OmsError
from bus.settings import SERVICES, Settings
from cli import cluster
from cli.connection import connect_briefly
from cli.health import StackStatus, answers, status, subjects
from cli.processes import (
    NATS_SERVER,
    PACKAGES,
    Layout,
    alive,
    is_ours,
    log_tail,
    port_busy,
    proc_text,
    read_pid,
    running_pid,
    send_signal,
    signals_held,
    wait_gone,
)

__all__ = [
    "NATS_SERVER",
    "PACKAGES",
    "Layout",
    "Process",
    "Stack",
    "StackError",
    "StackSettings",
    "StackStatus",
    "Stopped",
    "down",
    "kill",
    "log_tail",
    "running_pid",
    "signals_held",
    "start_service",
    "status",
    "up",
]


class StackSettings(BaseSettings):
    """How the embedded stack runs: `OMS_NATS_PORT` (0 = any free port), start and stop deadlines."""

    model_config = SettingsConfigDict(env_prefix="OMS_", extra="ignore")

    nats_port: int = Field(4222, ge=0, le=65535)
    ready_timeout_s: float = Field(20.0, gt=0)
    stop_timeout_s: float = Field(10.0, gt=0)


class StackError(Exception):
    """The stack could not be started; the message says what happened and where to look."""


@dataclass
class Process:
    """One process of the stack as `up` left it."""

    name: str
    pid: int
    started: bool
    log: Path
    subjects: list[str] = field(default_factory=list)
    url: str = ""  # a nats-server's client URL


@dataclass
class Stack:
    """What `up` returns: the servers' URLs, the nats-server processes (none when external) and the services."""

    url: str
    nats: list[Process]
    services: list[Process]


@dataclass
class Stopped:
    name: str
    pid: int
    outcome: str  # "stopped" (SIGTERM), "killed" (SIGKILL) or "not running" (stale pid file)


# -- processes ------------------------------------------------------------


# -- starting -------------------------------------------------------------


def child_env(settings: Settings, credentials: auth.Credentials | None = None) -> dict[str, str]:
    """The environment of a service: ours, plus what this settings object overrides, plus its own NATS
    user when it has one (the embedded server's generated credentials)."""
    env = dict(os.environ)
    env["OMS_HOME"] = str(Layout.of(settings).home)
    env["OMS_NATS_URL"] = settings.resolved_nats_url()
    for name in SERVICES:
        env[f"OMS_METRICS_PORT_{name.upper()}"] = str(settings.metrics_port(name))
    if credentials is not None:
        env["OMS_NATS_USER"] = credentials.user
        env["OMS_NATS_PASSWORD"] = credentials.password
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_service(
    settings: Settings, name: str, credentials: auth.Credentials | None = None
) -> subprocess.Popen[bytes]:
    """Start one service as `python -m <package>` in its own session, as the NATS user `credentials`
    (None: what the environment says); writes its pid file."""
    layout = Layout.of(settings)
    layout.prepare()
    port = settings.metrics_port(name)
    if port and port_busy(settings.metrics_host, port):
        raise StackError(
            f"metrics port {port} for {name} is in use: "
            f"set OMS_METRICS_PORT_{name.upper()} to a free port (or 0 to turn metrics off)"
        )
    env = child_env(settings, credentials)
    with open(layout.log_file(name), "ab") as log, signals_held():
        proc = subprocess.Popen(
            [sys.executable, "-m", PACKAGES[name]],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        layout.pid_file(name).write_text(f"{proc.pid}\n")
    return proc


def _nats_port(settings: Settings, wanted: int) -> int:
    """`wanted` (0: any free port; a busy one is an error, as a busy metrics port is), unless services of
    this home still run: they keep reconnecting to the URL of the last run, so nats-server comes back on
    that port when it is free."""
    layout = Layout.of(settings)
    if any(running_pid(settings, name) for name in SERVICES):
        with contextlib.suppress(OSError, ValueError, IndexError):
            previous = int(layout.url_file.read_text().strip().rsplit(":", 1)[1])
            if not port_busy("127.0.0.1", previous):
                return previous
    if wanted and port_busy("127.0.0.1", wanted):
        raise StackError(
            f"port {wanted} for nats-server (OMS_NATS_PORT) is in use by another process: "
            "set OMS_NATS_PORT to a free port (or 0 for any free port)"
        )
    return wanted  # 0: natsserver.start picks a free one


def _url_of_running(layout: Layout) -> str:
    with contextlib.suppress(OSError):
        return layout.url_file.read_text().strip()
    pid = read_pid(layout.pid_file(NATS_SERVER))
    cmdline = (proc_text(pid, "cmdline") if pid else None) or []
    port = cmdline[cmdline.index("-p") + 1] if "-p" in cmdline else "4222"
    return f"nats://127.0.0.1:{port}"


def nats_names(settings: Settings) -> list[str]:
    """The nats-server processes of this home: one, or the nodes of its cluster."""
    found = cluster.load(Layout.of(settings))
    return found.names if found is not None else [NATS_SERVER]


def ensure_nats(settings: Settings, stack: StackSettings, size: int | None = None) -> tuple[list[Process], str]:
    """The embedded nats-server(s) of this home, with the accounts and users of `bus.accounts`: one server,
    or the nodes of a cluster (`size`: None as the home already is, 1 one server, 3 or more a cluster).
    Running ones are left alone (told to reload their configuration when it changed); the rest start."""
    layout = Layout.of(settings)
    layout.prepare()
    if size == 2 or (size is not None and size < 1):
        raise StackError("a cluster needs 3 or more nodes (JetStream keeps a majority of them), or 1 for one server")
    try:
        existing = cluster.load(layout)
        if existing is not None and size == 1:
            raise cluster.ClusterError(f"{layout.home} holds a cluster of {len(existing.nodes)}: use another OMS_HOME")
        plan = cluster.plan(layout, size, stack.nats_port) if (size or 0) >= 3 else existing
    except cluster.ClusterError as exc:
        raise StackError(str(exc)) from None
    if plan is None:
        return [_ensure_one(settings, stack)], _url_of_running(layout)
    nodes = [_ensure_node(settings, layout, plan, node) for node in plan.nodes]
    layout.url_file.write_text(f"{plan.urls}\n")
    return nodes, plan.urls


def _ensure_one(settings: Settings, stack: StackSettings) -> Process:
    layout = Layout.of(settings)
    config = auth.config_path(settings)
    before = config.read_text() if config.exists() else None
    auth.prepare(settings)
    pid = running_pid(settings, NATS_SERVER)
    if pid is not None:
        if before is not None and config.read_text() != before:
            send_signal(pid, signal.SIGHUP)  # nats-server reloads its configuration
        return Process(NATS_SERVER, pid, started=False, log=layout.log_file(NATS_SERVER), url=_url_of_running(layout))
    port = _nats_port(settings, stack.nats_port)
    proc, url = _start_server(layout, NATS_SERVER, layout.nats_store, port, config)
    layout.url_file.write_text(f"{url}\n")
    return proc


def _ensure_node(settings: Settings, layout: Layout, plan: cluster.Plan, node: cluster.Node) -> Process:
    config = layout.home / f"{node.name}.conf"
    before = config.read_text() if config.exists() else None
    cluster.configure(settings, layout, plan, node)
    pid = running_pid(settings, node.name)
    if pid is not None:
        if before is not None and config.read_text() != before:
            send_signal(pid, signal.SIGHUP)
        return Process(node.name, pid, started=False, log=layout.log_file(node.name), url=node.url)
    if port_busy("127.0.0.1", node.client_port) or port_busy("127.0.0.1", node.route_port):
        raise StackError(
            f"{node.name}'s ports ({node.client_port}, routes {node.route_port}) are in use by another process: "
            "free them, or use another OMS_HOME"
        )
    return _start_server(layout, node.name, cluster.store_of(layout, node.name), node.client_port, config)[0]


def _start_server(layout: Layout, name: str, store: Path, port: int, config: Path) -> tuple[Process, str]:
    log = layout.log_file(name)
    with signals_held():
        try:
            proc, url = natsserver.start(store, port=port, config=config, log_file=log)
        except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
            raise StackError(f"{exc}\nlast lines of {log}:\n{log_tail(log)}") from None
        layout.pid_file(name).write_text(f"{proc.pid}\n")
    return Process(name, proc.pid, started=True, log=log, url=url), url


async def up(settings: Settings, stack: StackSettings | None = None, *, cluster_size: int | None = None) -> Stack:
    """Start what is not running (nats-server unless OMS_NATS_URL is set, or the nodes of the home's
    cluster; then each service); wait until every service answers `$SRV.PING.<name>`. Processes already
    running are left alone. `cluster_size`: see `ensure_nats`."""
    stack = stack or StackSettings()
    layout = Layout.of(settings)
    layout.prepare()
    settings = settings.model_copy(update={"home": layout.home})
    nats_procs: list[Process] = []
    credentials: dict[str, auth.Credentials | None] = dict.fromkeys(SERVICES)
    if settings.nats_url:
        url = settings.nats_url
    else:
        nats_procs, url = ensure_nats(settings, stack, cluster_size)
        credentials = {name: auth.load(settings, name) for name in SERVICES}
    client_settings = auth.login(settings, "cli").model_copy(update={"nats_url": url})
    settings = settings.model_copy(update={"nats_url": url})
    deadline = time.monotonic() + stack.ready_timeout_s
    try:
        nc = await connect_briefly(client_settings, "oms-up")
    except OmsError as exc:
        if not nats_procs:  # OMS_NATS_URL names the server
            raise StackError(
                f"cannot reach NATS at {url} (OMS_NATS_URL): start that server, "
                "or unset OMS_NATS_URL to let `oms up` start a local one"
            ) from None
        raise StackError(exc.message) from None
    try:
        services: list[Process] = []
        children: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        for name in SERVICES:
            log = layout.log_file(name)
            pid = running_pid(settings, name)
            if pid is None:
                offset = log.stat().st_size if log.exists() else 0
                proc = start_service(settings, name, credentials[name])
                children[name] = (proc, offset)
                pid = proc.pid
            services.append(Process(name, pid, started=name in children, log=log))
        await _wait_ready(nc, services, children, deadline, stack.ready_timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return Stack(url=url, nats=nats_procs, services=services)


async def _wait_ready(
    nc: Nats,
    services: list[Process],
    children: dict[str, tuple[subprocess.Popen[bytes], int]],
    deadline: float,
    timeout_s: float,
) -> None:
    pending = {s.name: s for s in services}
    while pending:
        for name, proc in list(pending.items()):
            _fail_if_dead(proc, children.get(name))
            if await answers(nc, name):
                proc.subjects = await subjects(nc, name)
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            logs = "\n".join(f"--- {p.log}:\n{log_tail(p.log, lines=8)}" for p in pending.values())
            raise StackError(f"{names} did not answer $SRV.PING within {timeout_s:g}s\n{logs}")
        await asyncio.sleep(0.1)


def _fail_if_dead(proc: Process, child: tuple[subprocess.Popen[bytes], int] | None) -> None:
    if child is not None:
        popen, offset = child
        code = popen.poll()
        if code is None:
            return
        raise StackError(
            f"{proc.name} exited with code {code} while starting; last lines of {proc.log}:\n"
            f"{log_tail(proc.log, offset)}"
        )
    if not alive(proc.pid):
        raise StackError(f"{proc.name} (pid {proc.pid}) stopped while starting; see {proc.log}")


# -- stopping -------------------------------------------------------------


def _stop(layout: Layout, names: list[str], timeout_s: float) -> list[Stopped]:
    report: list[Stopped] = []
    targets: dict[int, str] = {}
    for name in names:
        pid = read_pid(layout.pid_file(name))
        if pid is None:
            continue
        if is_ours(layout, name, pid):
            targets[pid] = name
            send_signal(pid, signal.SIGTERM)
        else:
            report.append(Stopped(name, pid, "not running"))
    stubborn = wait_gone(list(targets), timeout_s)
    for pid in stubborn:
        send_signal(pid, signal.SIGKILL)
    wait_gone(stubborn, 5.0)
    for pid, name in targets.items():
        report.append(Stopped(name, pid, "killed" if pid in stubborn else "stopped"))
    for name in names:
        layout.pid_file(name).unlink(missing_ok=True)
    order = {name: i for i, name in enumerate(names)}
    return sorted(report, key=lambda s: order[s.name])


def stop(settings: Settings, names: list[str], stack: StackSettings | None = None) -> list[Stopped]:
    """SIGTERM these processes of the stack (SIGKILL after the stop timeout), and no other."""
    return _stop(Layout.of(settings), names, (stack or StackSettings()).stop_timeout_s)


def down(settings: Settings, stack: StackSettings | None = None) -> list[Stopped]:
    """SIGTERM the services, then nats-server; SIGKILL what is still there after the stop timeout."""
    stack = stack or StackSettings()
    layout = Layout.of(settings)
    report = _stop(layout, list(SERVICES), stack.stop_timeout_s)
    return report + _stop(layout, nats_names(settings), stack.stop_timeout_s)


def kill(settings: Settings, name: str, sig: signal.Signals = signal.SIGKILL) -> int | None:
    """Send `sig` to one process of the stack (for chaos); the pid file stays so `up` restarts it."""
    if name not in PACKAGES and name not in nats_names(settings):
        raise ValueError(f"unknown process {name!r}: one of {', '.join([*SERVICES, *nats_names(settings)])}")
    pid = running_pid(settings, name)
    if pid is not None:
        send_signal(pid, sig)
    return pid
