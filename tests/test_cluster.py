"""On a cluster of three real nats-servers (`oms up --cluster 3`'s own machinery): the stream R3 and kept R3,
a server list everywhere, and nodes killed with SIGKILL under load with nothing lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from rich.console import Console

from bus import auth
from bus import subjects as s
from bus.app import running
from bus.audit import run_audit
from bus.client import Client
from bus.connect import connect
from bus.settings import Settings
from bus.stream import Reader, jetstream
from cli import cluster, health, stack, views
from cli.loadgen import LoadPlan, LoadResult, Mix, run_load
from cli.processes import Layout, running_pid
from inventory_svc.service import SPEC as INVENTORY
from order_svc.service import SPEC as ORDERS
from payment_svc.service import SPEC as PAYMENT
from tests.conftest import wait_for

pytestmark = pytest.mark.slow
SPECS = (INVENTORY, PAYMENT, ORDERS)


@dataclass
class Cluster:
    settings: Settings  # this home; the servers from its nats.url
    plan: cluster.Plan

    def node_of(self, url: str) -> cluster.Node:
        return next(n for n in self.plan.nodes if n.url.endswith(f":{url.rsplit(':', 1)[1]}"))

    def kill(self, node: str) -> None:
        pid = running_pid(self.settings, node)
        assert pid is not None, node
        os.kill(pid, signal.SIGKILL)

    def restart(self) -> list[stack.Process]:
        return stack.ensure_nats(self.settings, stack.StackSettings(nats_port=0))[0]


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    settings = Settings(
        home=tmp_path_factory.mktemp("cluster"), metrics_port_orders=0, metrics_port_inventory=0, metrics_port_payment=0
    )
    config = stack.StackSettings(nats_port=0)
    try:
        procs, _ = stack.ensure_nats(settings, config, 3)
        assert [p.name for p in procs] == ["nats-1", "nats-2", "nats-3"] and all(p.started for p in procs)
        found = cluster.load(Layout.of(settings))
        assert found is not None
        yield Cluster(settings, found)
    finally:
        stack.down(settings, config)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own, for a test that kills a node of it. On the shared cluster, a kill soon after
    other tests had killed and restarted nodes sometimes left the stream without a leader until the node
    came back (seen, not explained: RAFT needs a majority that has everything); a cluster per test keeps
    each test's faults its own."""
    settings = Settings(
        home=tmp_path / "fresh", metrics_port_orders=0, metrics_port_inventory=0, metrics_port_payment=0
    )
    config = stack.StackSettings(nats_port=0)
    try:
        stack.ensure_nats(settings, config, 3)
        found = cluster.load(Layout.of(settings))
        assert found is not None
        yield Cluster(settings, found)
    finally:
        stack.down(settings, config)


@pytest.fixture
async def fresh_services(fresh: Cluster) -> AsyncIterator[dict[str, Any]]:
    async with AsyncExitStack() as exits:
        kernels = {}
        for spec in SPECS:
            kernels[spec.name] = await exits.enter_async_context(
                running(spec, auth.login(fresh.settings, spec.name), serve_metrics=False)
            )
        yield kernels


@pytest.fixture
async def services(three: Cluster) -> AsyncIterator[dict[str, Any]]:
    async with AsyncExitStack() as exits:
        kernels = {}
        for spec in SPECS:
            kernels[spec.name] = await exits.enter_async_context(
                running(spec, auth.login(three.settings, spec.name), serve_metrics=False)
            )
        yield kernels


async def admin(three: Cluster) -> Any:
    return await connect(auth.login(three.settings, "admin"), "test-admin", persistent=False)


async def stream_info(nc: Any, settings: Settings) -> Any:
    return await (await jetstream(nc, settings.stream_name)).stream_info(settings.stream_name)


async def all_current(nc: Any, settings: Settings, seen: list[str] | None = None) -> bool:
    """The stream has a leader and every other node's copy is current, has nothing to catch up and was heard
    from within the last second: losing any one node now leaves a majority with everything. `seen` keeps
    what the last look found, for the message of a wait that runs out."""
    try:
        info = await stream_info(nc, settings)
    except Exception as e:  # no leader to answer yet
        if seen is not None:
            seen[:] = [f"no stream info: {e!r}"]
        return False
    replicas = info.cluster.replicas if info.cluster else None
    if seen is not None:
        seen[:] = [f"leader={info.cluster.leader if info.cluster else None} replicas={replicas}"]
    return (
        bool(info.cluster and info.cluster.leader)
        and len(replicas or []) == 2
        and all(r.current and not r.lag and not r.offline and (r.active or 0) < 1_000_000_000 for r in replicas or [])
    )


async def replicas_caught_up(nc: Any, settings: Settings, timeout: float, what: str) -> None:
    """Wait for `all_current`; a wait that runs out says what the stream's replicas looked like last."""
    seen: list[str] = []
    try:
        await wait_for(lambda: all_current(nc, settings, seen), timeout=timeout, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {seen[0] if seen else 'nothing'}") from None


async def stored(js: Any, subject: str, event_id: str) -> bool:
    """Publish one event (again, under its id: the stream keeps it once). A stream just created on one node
    can meet no responders for a moment from a connection to another, until its interest reaches there
    over the routes; the services' relays send again the same way."""
    try:
        await js.publish(subject, b"{}", headers={"Nats-Msg-Id": event_id})
    except (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError):
        return False
    return True


async def event_ids(nc: Any, settings: Settings) -> Counter[str]:
    """How many times each event id is in the stream, read to its end."""
    js = await jetstream(nc, settings.stream_name)
    total = (await js.stream_info(settings.stream_name)).state.messages
    seen: Counter[str] = Counter()
    reader = await Reader(nc, settings.stream_name).open("events.>", from_start=True)
    try:
        while sum(seen.values()) < total:
            batch = await reader.next_batch(5.0)
            assert batch, f"the stream stopped after {sum(seen.values())} of {total} events"
            seen.update(json.loads(msg.data)["event_id"] for msg in batch)
    finally:
        await reader.close()
    return seen


async def test_the_stream_is_r3_on_a_cluster_and_stays_r3_when_the_services_restart(three: Cluster, services):
    nc = await admin(three)
    try:
        info = await stream_info(nc, three.settings)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and {info.cluster.leader, *(r.name for r in info.cluster.replicas)} == set(
            three.plan.names
        )
    finally:
        await nc.close()


async def test_services_restarted_against_an_r3_stream_leave_it_r3(three: Cluster):
    """A restart of every service (each updates the stream's settings) must not turn it back into R1."""
    for spec in SPECS:
        async with running(spec, auth.login(three.settings, spec.name), serve_metrics=False):
            pass
    nc = await admin(three)
    try:
        assert (await stream_info(nc, three.settings)).config.num_replicas == 3
    finally:
        await nc.close()


async def test_status_shows_each_node_the_streams_leader_the_meta_leader_and_the_replicas_lag(three: Cluster, services):
    nc = await admin(three)
    try:
        await replicas_caught_up(nc, three.settings, 30, "every replica current")
        leader = (await stream_info(nc, three.settings)).cluster.leader
    finally:
        await nc.close()
    found = await health.status(three.settings)
    nodes = {n.name: n for n in found.nodes}
    assert sorted(nodes) == ["nats-1", "nats-2", "nats-3"], found.nodes
    assert all(n.running and n.pid and n.url for n in nodes.values()), found.nodes
    assert nodes[leader].stream_role == "leader"
    replicas = [n for n in nodes.values() if n.stream_role == "replica"]
    assert len(replicas) == 2 and all(n.current and n.lag == 0 and not n.offline for n in replicas), found.nodes
    assert sum(n.meta_leader for n in nodes.values()) == 1, found.nodes
    table = views.nodes_table(found.nodes)
    console = Console(width=80, record=True)
    console.print(table)
    shown = console.export_text()
    assert all(name in shown for name in nodes) and "leader" in shown


async def test_an_r1_stream_converts_to_r3_in_place_and_keeps_its_events(tmp_path: Path):
    settings = Settings(home=tmp_path / "convert", stream_name="CONVERT_EVENTS", stream_replicas=1)
    config = stack.StackSettings(nats_port=0)
    try:
        stack.ensure_nats(settings, config, 3)
        as_orders = auth.login(settings, "orders")
        nc = await connect(as_orders, "convert", persistent=False)
        try:
            from bus.stream import ensure_stream

            js = nc.jetstream()
            assert (await ensure_stream(nc, js, as_orders)).config.num_replicas == 1
            for i in range(20):
                await wait_for(
                    lambda i=i: stored(js, f"events.orders.order_created.o{i}", f"e{i}"),
                    timeout=10,
                    what=f"event e{i} stored",
                )
            wanted = as_orders.model_copy(update={"stream_replicas": 3})
            assert (await ensure_stream(nc, js, wanted)).config.num_replicas == 3
            await wait_for(
                lambda: all_current(nc, settings.model_copy(update={"stream_name": "CONVERT_EVENTS"})),
                timeout=20,
                what="the new replicas to be current",
            )
            again = await ensure_stream(nc, js, as_orders.model_copy(update={"stream_replicas": 0}))
            assert again.config.num_replicas == 3 and again.state.messages == 20  # auto never lowers it
        finally:
            await nc.close()
    finally:
        stack.down(settings, config)


async def test_losing_the_stream_leader_and_then_another_node_under_load_loses_nothing(three: Cluster, services):
    """Orders at a steady rate (declines and out of stock among them); the node that leads OMS_EVENTS and
    that the order service is connected to is killed, comes back, then another node is killed: every order
    ends terminal with its business outcome, the audit is clean, every event id is in the stream once."""
    nc = await admin(three)
    try:
        await replicas_caught_up(nc, three.settings, 20, "every replica current")
        # The stream's leader moves to the node the order service is connected to.
        home = three.node_of(str(services["orders"].nc.connected_url.geturl()))
        info = await stream_info(nc, three.settings)
        if info.cluster.leader != home.name:
            body = json.dumps({"placement": {"preferred": home.name}}).encode()
            await nc.request(f"JS.OMS.API.STREAM.LEADER.STEPDOWN.{three.settings.stream_name}", body, timeout=10)
            await wait_for(lambda: leader_is(nc, three.settings, home.name), timeout=20, what="the leader to move")
        plan = LoadPlan(orders=900, concurrency=16, rate=45, mix=Mix(declined=0.1, out_of_stock=0.05), seed=7)
        phases: list[str] = []
        steps = {150: "kill the leader", 350: "restart it", 600: "kill another"}

        def progress(r: LoadResult) -> None:
            done = r.completed + sum(r.errors.values())
            for at, what in steps.items():
                if done >= at and what not in phases:
                    phases.append(what)

        load = asyncio.create_task(run_load(three.settings, plan, on_progress=progress))
        await wait_for(lambda: "kill the leader" in phases, timeout=60, what="the first orders")
        three.kill(home.name)
        await wait_for(lambda: "restart it" in phases, timeout=90, what="orders through the first loss")
        assert [p.name for p in three.restart() if p.started] == [home.name]
        await replicas_caught_up(nc, three.settings, 30, "the node to catch up")
        await wait_for(lambda: "kill another" in phases, timeout=90, what="orders after the restart")
        other = next(n for n in three.plan.nodes if n.name != home.name)
        three.kill(other.name)
        result = await asyncio.wait_for(load, 180)
        assert result.errors == {}, result.errors  # nothing but business outcomes reached the client
        assert result.completed == plan.orders
        assert set(result.outcomes) <= {"CONFIRMED", "FAILED"} and result.outcomes["CONFIRMED"] > 0
        assert result.outcomes["FAILED"] >= result.by_kind["declined"]  # declined cards, out of stock
        three.restart()
        await replicas_caught_up(nc, three.settings, 30, "the second node to catch up")
        js = await jetstream(nc, three.settings.stream_name)
        report = await run_audit(Client(nc, timeout_s=15), js, three.settings.stream_name, three.settings.saga)
        assert report.ok, report.to_dict()
        assert report.orders >= plan.orders
        repeated = {event: n for event, n in (await event_ids(nc, three.settings)).items() if n > 1}
        assert repeated == {}
    finally:
        await nc.close()


async def leader_is(nc: Any, settings: Settings, node: str) -> bool:
    info = await stream_info(nc, settings)
    return info.cluster is not None and info.cluster.leader == node


async def test_a_cli_connection_reaches_the_cluster_when_the_first_server_of_its_list_is_down(three: Cluster):
    first, *rest = three.plan.nodes
    three.kill(first.name)
    try:
        as_cli = auth.login(three.settings, "cli").model_copy(
            update={"nats_url": ",".join([first.url, *(n.url for n in rest)])}
        )
        as_cli = as_cli.model_copy(
            update={"nats_user": "cli", "nats_password": auth.load(three.settings, "cli").password}
        )
        nc = await connect(as_cli, "listed", persistent=False)
        try:
            assert nc.is_connected and not nc.connected_url.geturl().endswith(f":{first.client_port}")
        finally:
            await nc.close()
    finally:
        three.restart()
        nc = await admin(three)
        try:
            await replicas_caught_up(nc, three.settings, 60, "the node to catch up")
        finally:
            await nc.close()


def test_a_server_list_is_split_and_a_bad_entry_named():
    assert Settings(nats_url=" nats://a:4222, tls://b:4223 ,c:4224").nats_servers() == [
        "nats://a:4222",
        "tls://b:4223",
        "c:4224",
    ]
    with pytest.raises(ValueError, match="'not a url' is not a NATS server URL"):
        Settings(nats_url="nats://a:4222,not a url")


def test_a_home_keeps_what_it_was_made(tmp_path: Path):
    settings = Settings(home=tmp_path / "one")
    config = stack.StackSettings(nats_port=0)
    try:
        stack.ensure_nats(settings, config)  # one server
        stack.down(settings, config)
        with pytest.raises(stack.StackError, match="ran a single nats-server"):
            stack.ensure_nats(settings, config, 3)
        with pytest.raises(stack.StackError, match="3 or more nodes"):
            stack.ensure_nats(settings, config, 2)
    finally:
        stack.down(settings, config)


async def test_following_the_events_goes_on_when_the_streams_leader_dies(fresh: Cluster, fresh_services):
    three = fresh
    nc = await admin(three)
    buyer = await connect(auth.login(three.settings, "cli"), "buyer", persistent=False)
    try:
        await replicas_caught_up(nc, three.settings, 30, "every replica current")
        reader = await Reader(nc, three.settings.stream_name).open("events.orders.>", from_start=False)
        leader = (await stream_info(nc, three.settings)).cluster.leader
        three.kill(leader)
        client = Client(buyer, timeout_s=15, patience_s=30)
        placed = []
        for i in range(5):
            body = {"customer_id": f"tail-{i}", "items": [{"sku": "KB-101", "qty": 1}]}
            placed.append((await client.call(s.ORDERS_PLACE, body, idempotency_key=f"tail-{i}-{leader}"))["order_id"])
        seen: list[tuple[str, str]] = []  # (order, event type)
        sequences: list[int] = []

        async def caught_up() -> bool:
            for msg in await reader.next_batch(1.0):
                event = json.loads(msg.data)
                seen.append((event["order_id"], event["type"]))
                sequences.append(msg.seq)
            return all((oid, "order_confirmed") in seen for oid in placed)

        await wait_for(caught_up, timeout=60, what="the reader to read past the lost leader")
        assert sequences == sorted(set(sequences))  # in stream order, nothing twice
        for oid in placed:  # created and confirmed, each once (a step retried in the election may add one)
            assert seen.count((oid, "order_created")) == 1 and seen.count((oid, "order_confirmed")) == 1
        await reader.close()
    finally:
        await buyer.close()
        await nc.close()
        three.restart()


async def test_a_rebuild_by_replay_goes_on_when_the_stream_leader_dies_midway(
    fresh: Cluster, fresh_services, monkeypatch, tmp_path
):
    """Small windows, so the rebuild opens many consumers; the stream's leader is killed after the first."""
    three = fresh
    import sqlite3

    from bus import reader, replay

    nc = await admin(three)
    buyer = Client(await connect(auth.login(three.settings, "cli"), "buyer", persistent=False), timeout_s=15)
    try:
        for i in range(30):
            line = [{"sku": "KB-101", "qty": 1}]
            await buyer.call(
                s.ORDERS_PLACE, {"customer_id": f"r-{i}", "items": line}, idempotency_key=f"r-{i}-{tmp_path.name}"
            )
        await replicas_caught_up(nc, three.settings, 30, "every replica current")
        leader = (await stream_info(nc, three.settings)).cluster.leader
        monkeypatch.setattr(reader, "WINDOW", 25)
        killed: list[str] = []

        def progress(applied: int, total: int) -> None:
            if applied and not killed:
                three.kill(leader)
                killed.append(leader)

        elsewhere = auth.login(three.settings, "payment").model_copy(update={"home": tmp_path / "rebuilt"})
        elsewhere = elsewhere.model_copy(update={"nats_url": three.plan.urls})
        creds = auth.load(three.settings, "payment")
        assert creds is not None
        elsewhere = elsewhere.model_copy(update={"nats_user": "payment", "nats_password": creds.password})
        stats = await replay.recover(elsewhere, PAYMENT, progress=progress)
        assert killed == [leader]
        assert stats.applied == stats.total >= 30

        def rows(path: Path) -> list[tuple]:
            conn = sqlite3.connect(path)
            try:
                return conn.execute("SELECT * FROM payments ORDER BY order_id").fetchall()
            finally:
                conn.close()

        assert rows(elsewhere.db_path("payment")) == rows(three.settings.db_path("payment"))
    finally:
        await buyer.nc.close()
        await nc.close()
        three.restart()


async def test_an_event_sent_again_after_its_streams_leader_died_is_acknowledged_as_a_duplicate(fresh: Cluster):
    """What a relay does after a failover: send again, under the same ids, what it cannot prove was acknowledged.
    The new leader knows those ids (the dedupe window is replicated with the stream) and stores none twice."""
    as_orders = auth.login(fresh.settings, "orders")
    from bus.stream import ensure_stream

    nc = await connect(as_orders, "dedupe", persistent=False)
    try:
        js = nc.jetstream()
        assert (await ensure_stream(nc, js, as_orders)).config.num_replicas == 3
        ids = [f"evt_dedupe_{i}" for i in range(30)]
        for i, event_id in enumerate(ids):
            await wait_for(
                lambda i=i, e=event_id: stored(js, f"events.orders.order_created.o{i}", e),
                timeout=10,
                what=f"event {event_id} stored",
            )
        await replicas_caught_up(nc, fresh.settings, 20, "every replica current")
        leader = (await stream_info(nc, fresh.settings)).cluster.leader
    finally:
        await nc.close()
    fresh.kill(leader)
    nc = await connect(as_orders, "dedupe-after", persistent=False)  # to a node still up
    try:
        js = nc.jetstream()

        async def new_leader() -> bool:
            try:
                info = await stream_info(nc, fresh.settings)
            except Exception:
                return False
            return info.cluster is not None and info.cluster.leader not in (None, leader)

        await wait_for(new_leader, timeout=30, what="a new leader")
        acks = []
        for i, event_id in enumerate(ids):
            acks.append(await js.publish(f"events.orders.order_created.o{i}", b"{}", headers={"Nats-Msg-Id": event_id}))
        assert all(ack.duplicate for ack in acks), [ack for ack in acks if not ack.duplicate]
        assert (await stream_info(nc, fresh.settings)).state.messages == len(ids)
        fresh_one = await js.publish("events.orders.order_created.new", b"{}", headers={"Nats-Msg-Id": "evt_new"})
        assert not fresh_one.duplicate  # the new leader takes new events as before
    finally:
        await nc.close()
