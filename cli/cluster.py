"""The embedded cluster: `oms up --cluster N` runs N nats-servers on loopback, routed to each other.

    OMS_HOME/
      cluster.json        the nodes: names, client and route ports (fixed at the first `up`)
      nats-<i>.conf       each node's configuration: the accounts and users of `bus.accounts`,
                          its name and its routes (authenticated: `credentials/route.json`)
      nats/nats-<i>/      each node's JetStream store
      nats.url            every node's client URL, comma-separated (the services get the list)
      pids/nats-<i>.pid, logs/nats-<i>.log

The ports are chosen once and kept, so a node that `oms up` restarts comes back where its peers'
routes and the services' server lists expect it. A home stays what it was first made: one server
or a cluster of N (a single server's JetStream store cannot become a cluster node's).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bus import auth, natsconf, natsserver
from bus.settings import Settings
from cli.processes import Layout, port_busy

ROUTE_HOST = "127.0.0.1"


class ClusterError(Exception):
    """The cluster cannot be made or started as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Node:
    name: str
    client_port: int
    route_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def route(self) -> str:
        return f"{ROUTE_HOST}:{self.route_port}"


@dataclass(frozen=True)
class Plan:
    """The nodes of this home's cluster."""

    nodes: tuple[Node, ...]

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)


def plan_file(layout: Layout) -> Path:
    return layout.home / "cluster.json"


def node_name(i: int) -> str:
    return f"nats-{i}"


def load(layout: Layout) -> Plan | None:
    """This home's cluster, or None for a home of one server (or a new one)."""
    try:
        body = json.loads(plan_file(layout).read_text())
        return Plan(tuple(Node(**node) for node in body["nodes"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(
            f"{plan_file(layout)} is unreadable ({exc}): remove it and the home's nats/ folder"
        ) from None


def plan(layout: Layout, size: int, base_port: int) -> Plan:
    """This home's cluster of `size` nodes: the one it has (which must be that size), or a new one with
    client ports from `base_port` up (0: free ports) and free route ports."""
    found = load(layout)
    if found is not None:
        if size and len(found.nodes) != size:
            raise ClusterError(
                f"{layout.home} holds a cluster of {len(found.nodes)} nodes, not {size}: "
                "use another OMS_HOME for another cluster"
            )
        return found
    if (layout.nats_store / "jetstream").exists():
        raise ClusterError(
            f"{layout.home} ran a single nats-server: its JetStream store cannot become a cluster's. "
            "Use another OMS_HOME for the cluster (or `oms down` and remove this home's nats/ folder)"
        )
    nodes = []
    for i in range(1, size + 1):
        client = base_port + i - 1 if base_port else natsserver.free_port()
        if base_port and port_busy("127.0.0.1", client):
            raise ClusterError(
                f"port {client} for {node_name(i)} is in use: set OMS_NATS_PORT to a free range (or 0 for any)"
            )
        nodes.append(Node(node_name(i), client, natsserver.free_port()))
    made = Plan(tuple(nodes))
    plan_file(layout).write_text(json.dumps({"nodes": [asdict(n) for n in made.nodes]}, indent=2) + "\n")
    return made


def configure(settings: Settings, layout: Layout, cluster: Plan, node: Node) -> Path:
    """Write `node`'s configuration: the accounts and users, its name, and routes to every node."""
    route = auth.route_credentials(settings)
    routes = tuple(f"nats-route://{route.user}:{route.password}@{peer.route}" for peer in cluster.nodes)
    conf = natsconf.Cluster(node=node.name, listen=node.route, routes=routes, route_password=route.hashed)
    return auth.prepare(settings, path=layout.home / f"{node.name}.conf", cluster=conf)


def store_of(layout: Layout, node: str) -> Path:
    return layout.nats_store / node
