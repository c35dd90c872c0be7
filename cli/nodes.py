"""What `oms status` says of the NATS servers: each node, who leads the event stream and the JetStream meta
group, and how far each replica of the stream lags.

The stream's info (any client may ask) names its leader and replicas; each server's JetStream report
(`$SYS.REQ.SERVER.PING.JSZ`, which OPS imports as `bus.accounts.JSZ_SUBJECT`) names the meta leader. The
nodes of an embedded cluster come from OMS_HOME (`cli.cluster`), with their processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as Nats
from nats.js.api import ClusterInfo

from bus.accounts import JSZ_SUBJECT
from bus.settings import Settings
from cli import cluster
from cli.processes import Layout, running_pid

JSZ_WAIT_S = 0.5


@dataclass
class NodeStatus:
    name: str
    url: str | None = None  # its client URL, when this home runs it
    pid: int | None = None
    running: bool | None = None  # None: not one of this home's processes
    stream_role: str | None = None  # "leader", "replica", or None (holds no copy)
    current: bool | None = None  # a replica that has everything its leader has
    lag: int | None = None  # operations it is behind its leader
    offline: bool = False
    meta_leader: bool = False


def stream_nodes(group: ClusterInfo | None) -> dict[str, NodeStatus]:
    """The stream's leader and replicas, from its info."""
    found: dict[str, NodeStatus] = {}
    if group is None:
        return found
    if group.leader:
        found[group.leader] = NodeStatus(group.leader, stream_role="leader", current=True, lag=0)
    for peer in group.replicas or []:
        found[peer.name] = NodeStatus(
            peer.name,
            stream_role="replica",
            current=bool(peer.current),
            lag=int(peer.lag or 0),
            offline=bool(peer.offline),
        )
    return found


async def meta_leader(nc: Nats, expected: int) -> str | None:
    """The JetStream meta leader as the servers report it, or None when this user may not ask them."""
    inbox = nc.new_inbox()
    leaders: list[str] = []
    answered = asyncio.Event()
    heard = 0

    async def keep(msg: Any) -> None:
        nonlocal heard
        heard += 1
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            leader = (json.loads(msg.data).get("data") or {}).get("meta_cluster", {}).get("leader")
            if leader:
                leaders.append(leader)
        if heard >= expected:
            answered.set()

    sub = await nc.subscribe(inbox, cb=keep)
    try:
        await nc.publish(JSZ_SUBJECT, b"{}", reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), JSZ_WAIT_S)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return max(set(leaders), key=leaders.count) if leaders else None


def merge(settings: Settings, from_stream: dict[str, NodeStatus], leader: str | None) -> list[NodeStatus]:
    """One row per node: this home's cluster nodes (with their processes) and whatever the stream names."""
    layout = Layout.of(settings)
    plan = None if settings.nats_url else cluster.load(layout)
    rows: dict[str, NodeStatus] = {}
    for node in plan.nodes if plan else ():
        pid = running_pid(settings, node.name)
        rows[node.name] = NodeStatus(node.name, node.url, pid, pid is not None)
    for name, seen in from_stream.items():
        row = rows.setdefault(name, NodeStatus(name))
        row.stream_role, row.current, row.lag, row.offline = seen.stream_role, seen.current, seen.lag, seen.offline
    for row in rows.values():
        row.meta_leader = row.name == leader
    return list(rows.values())
