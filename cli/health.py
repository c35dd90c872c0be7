"""What `oms status` reports: each service's process, micro INFO/STATS and `<service>.health`, NATS and the
event stream."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client as Nats
from nats.js.api import ClusterInfo

from bus.client import decode_reply
from bus.errors import OmsError
from bus.settings import SERVICES, Settings
from bus.stream import jetstream
from bus.subjects import HEALTH
from cli.connection import ADMIN, connect_briefly
from cli.nodes import NodeStatus, merge, meta_leader, stream_nodes
from cli.processes import NATS_SERVER, Layout, is_ours, read_pid, running_pid

PING_TIMEOUT_S = 0.5


@dataclass
class EndpointStatus:
    name: str
    subject: str
    requests: int
    errors: int
    last_error: str | None = None


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    answering: bool = False
    version: str | None = None
    api: str | None = None  # the contract's version (`$SRV.INFO` metadata)
    uptime_s: float | None = None
    requests: int = 0
    errors: int = 0
    endpoints: list[EndpointStatus] = field(default_factory=list)
    log: Path | None = None
    health: dict[str, Any] | None = None  # the `<service>.health` result: backlog, breakers, sagas, faults


@dataclass
class StreamStatus:
    name: str
    messages: int
    bytes: int
    consumers: int
    replicas: int = 1


@dataclass
class StackStatus:
    url: str
    nats_pid: int | None
    nats_reachable: bool
    nats_error: str | None
    stream: StreamStatus | None
    services: list[ServiceStatus]
    nodes: list[NodeStatus] = field(default_factory=list)  # the NATS servers, when there is more than one

    @property
    def healthy(self) -> bool:
        return self.nats_reachable and all(s.answering for s in self.services)


async def answers(nc: Nats, name: str) -> bool:
    """Some instance of `name` answers `$SRV.PING.<name>`."""
    try:
        await nc.request(f"$SRV.PING.{name}", b"", timeout=PING_TIMEOUT_S)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    return True


async def micro(nc: Nats, verb: str, name: str) -> dict[str, Any] | None:
    """The first answer to `$SRV.<verb>.<name>`, or None."""
    try:
        msg = await nc.request(f"$SRV.{verb}.{name}", b"", timeout=1.0)
        body = json.loads(msg.data)
    except (nats.errors.Error, ValueError):
        return None
    return body if isinstance(body, dict) else None


async def subjects(nc: Nats, name: str) -> list[str]:
    """The business subjects a service serves (its chaos endpoints left out)."""
    info = await micro(nc, "INFO", name) or {}
    found = [str(e.get("subject")) for e in info.get("endpoints") or [] if isinstance(e, dict)]
    return [s for s in found if not s.startswith("chaos.")]


async def status(settings: Settings) -> StackStatus:
    """Each service's process and, when NATS answers, its micro INFO/STATS; plus the event stream."""
    layout = Layout.of(settings)
    services = []
    for name in SERVICES:
        pid = read_pid(layout.pid_file(name))
        running = pid is not None and is_ours(layout, name, pid)
        services.append(ServiceStatus(name, pid, running, log=layout.log_file(name)))
    nats_pid = running_pid(settings, NATS_SERVER)
    url = settings.resolved_nats_url()
    try:
        nc = await connect_briefly(settings, "oms-status")
    except OmsError as exc:
        return StackStatus(url, nats_pid, False, exc.message, None, services)
    try:
        for svc in services:
            await _describe(nc, svc)
        stream, group = await _stream(nc, settings.stream_name)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    from_stream = stream_nodes(group)
    leader = await _meta_leader(settings, len(from_stream)) if len(from_stream) > 1 else None
    nodes = merge(settings, from_stream, leader)
    return StackStatus(url, nats_pid, True, None, stream, services, nodes if len(nodes) > 1 else [])


async def _meta_leader(settings: Settings, expected: int) -> str | None:
    """Asked as `admin`, whose account may hear the servers' JetStream reports; None when it may not."""
    try:
        nc = await connect_briefly(settings, "oms-status-nodes", role=ADMIN)
    except OmsError:
        return None
    try:
        return await meta_leader(nc, expected)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def _describe(nc: Nats, svc: ServiceStatus) -> None:
    info = await micro(nc, "INFO", svc.name)
    stats = await micro(nc, "STATS", svc.name)
    if info is None and stats is None:
        return
    svc.answering = True
    svc.version = (info or stats or {}).get("version")
    metadata = (info or stats or {}).get("metadata")
    svc.api = str(metadata["api"]) if isinstance(metadata, dict) and "api" in metadata else None
    by_name: dict[str, EndpointStatus] = {}
    for e in (info or {}).get("endpoints") or []:
        by_name[e["name"]] = EndpointStatus(e["name"], e.get("subject", ""), 0, 0)
    for e in (stats or {}).get("endpoints") or []:
        ep = by_name.setdefault(e["name"], EndpointStatus(e["name"], e.get("subject", ""), 0, 0))
        ep.requests = int(e.get("num_requests") or 0)
        ep.errors = int(e.get("num_errors") or 0)
        ep.last_error = str(e.get("last_error") or "") or None
    svc.endpoints = list(by_name.values())
    svc.requests = sum(e.requests for e in svc.endpoints)
    svc.errors = sum(e.errors for e in svc.endpoints)
    svc.health = await health(nc, svc.name)
    started = (stats or {}).get("started")
    if isinstance(started, str):
        with contextlib.suppress(ValueError):
            began = datetime.fromisoformat(started.replace("Z", "+00:00"))
            svc.uptime_s = max(0.0, (datetime.now(UTC) - began).total_seconds())


async def health(nc: Nats, name: str) -> dict[str, Any] | None:
    """The result of `<service>.health`, or None when it does not answer (or is not allowed to)."""
    subject = HEALTH[name].subject
    try:
        msg = await nc.request(subject, b"{}", timeout=1.0)
        return decode_reply(subject, msg.data)
    except (nats.errors.Error, OmsError):
        return None


async def _stream(nc: Nats, name: str) -> tuple[StreamStatus | None, ClusterInfo | None]:
    try:
        info = await (await jetstream(nc, name)).stream_info(name)
    except Exception:  # no JetStream, no stream yet, or no permission: status shows none
        return None, None
    replicas = info.config.num_replicas or 1
    return StreamStatus(name, info.state.messages, info.state.bytes, info.state.consumer_count, replicas), info.cluster
