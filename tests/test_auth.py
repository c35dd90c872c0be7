"""Least privilege: a nats-server with the generated configuration, the services as their own users, and
what each user is refused."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import stat
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import nats
import nats.errors
import pytest

from bus import auth, natsserver
from bus import subjects as s
from bus.app import running
from bus.client import Client
from bus.connect import connect, inbox_prefix
from bus.errors import NotFound, Unavailable
from bus.replay import recover
from bus.settings import SERVICES, Settings
from bus.stream import api_prefix, ensure_stream, jetstream
from cli import stack
from cli.connection import role_for
from cli.session import request as session_request
from inventory_svc.service import SPEC as INVENTORY
from order_svc.service import SPEC as ORDERS
from payment_svc.service import SPEC as PAYMENT
from tests.conftest import wait_for

REFUSAL_WAIT_S = 0.5


@dataclass
class Secured:
    """A nats-server that enforces `bus.auth`, the three services running as their users."""

    url: str
    settings: Settings  # OMS_HOME of this server, no user
    creds: dict[str, auth.Credentials]

    def as_user(self, user: str) -> Settings:
        return self.settings.model_copy(
            update={"nats_url": self.url, "nats_user": user, "nats_password": self.creds[user].password}
        )


@dataclass
class Session:
    """A plain nats-py connection as one user, keeping every error the server reports."""

    nc: Any
    errors: list[str]

    def refused(self, what: str) -> bool:
        return any("permissions violation" in e and what.lower() in e for e in self.errors)


async def session(secured: Secured, user: str) -> Session:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        secured.url,
        user=user,
        password=secured.creds[user].password,
        inbox_prefix=inbox_prefix(user),
        error_cb=on_error,
        allow_reconnect=False,
    )
    return Session(nc, errors)


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    home = tmp_path_factory.mktemp("secured")
    base = Settings(home=home, metrics_port_orders=0, metrics_port_inventory=0, metrics_port_payment=0)
    config = auth.prepare(base)
    proc, url = natsserver.start(home / "nats", config=config)
    try:
        found = Secured(url, base, auth.ensure_credentials(base))
        async with AsyncExitStack() as services:
            for spec in (INVENTORY, PAYMENT, ORDERS):
                await services.enter_async_context(running(spec, found.as_user(spec.name), serve_metrics=False))
            yield found
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


async def state(secured: Secured) -> dict[str, Any]:
    """What a refused request must not change: stock, reservations, payments, orders, the stream."""
    nc = await connect(secured.as_user("admin"), "snapshot", persistent=False)
    try:
        client = Client(nc, timeout_s=5)
        info = await (await jetstream(nc, secured.settings.stream_name)).stream_info(secured.settings.stream_name)
        return {
            "stock": await client.call(s.INVENTORY_STOCK, {}),
            "reservations": await client.call(s.INVENTORY_RESERVATIONS, {}),
            "payments": await client.call(s.PAYMENT_LIST, {}),
            "orders": await client.call(s.ORDERS_LIST, {}),
            "chaos": [await client.request(f"chaos.{name}.get", b"") for name in SERVICES],
            "events": info.state.messages,
        }
    finally:
        await nc.close()


# -- the generated files --------------------------------------------------------


def test_credentials_and_config_are_private_and_generated_once(tmp_path: Path):
    settings = Settings(home=tmp_path / "home")
    config = auth.prepare(settings)
    first = auth.ensure_credentials(settings)
    auth.prepare(settings)
    assert auth.ensure_credentials(settings) == first
    assert set(first) == {"orders", "inventory", "payment", "cli", "admin"}
    assert len({c.password for c in first.values()}) == len(first)
    folder = auth.credentials_dir(settings)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for user in first:
        assert stat.S_IMODE((folder / f"{user}.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    # The server's configuration holds bcrypt hashes only; the clear passwords stay in the 0600 files.
    text = config.read_text()
    assert not any(c.password in text for c in first.values())
    for c in first.values():
        assert c.hashed in text and bcrypt.checkpw(c.password.encode(), c.hashed.encode())
    assert config.read_text() == text  # prepared again: the same file, so a running server is not reloaded


def test_the_cli_uses_its_user_for_client_commands_and_admin_for_operator_commands(tmp_path: Path):
    for route in (s.ORDERS_PLACE, s.ORDERS_GET, s.ORDERS_CANCEL, s.INVENTORY_STOCK, s.PAYMENT_GET):
        assert role_for(route) == "cli"
    for route in (s.INVENTORY_RESTOCK, s.SAGA_RETRY, s.SAGA_ABORT, s.INVENTORY_RESERVATIONS, s.PAYMENT_LIST):
        assert role_for(route) == "admin"
    embedded = Settings(home=tmp_path / "home")
    assert auth.login(embedded, "cli").nats_user is None  # nothing generated yet: no user
    creds = auth.ensure_credentials(embedded)
    assert auth.login(embedded, "cli").nats_password == creds["cli"].password
    assert auth.login(embedded, "admin").nats_user == "admin"
    # An explicit user wins; with OMS_NATS_URL the generated files are not used.
    explicit = embedded.model_copy(update={"nats_user": "me", "nats_password": "pw"})
    assert auth.login(explicit, "admin").nats_user == "me"
    assert auth.login(embedded.model_copy(update={"nats_url": "nats://elsewhere:4222"}), "cli").nats_user is None


# -- the server enforces them ---------------------------------------------------


async def test_a_wrong_password_or_none_is_refused_with_a_clear_message(secured: Secured):
    wrong = secured.as_user("cli").model_copy(update={"nats_password": "not-the-password"})
    for persistent in (False, True):  # a service must not retry refused credentials forever
        with pytest.raises(Unavailable) as refused:
            await asyncio.wait_for(connect(wrong, "wrong", persistent=persistent), 10)
        assert "refused user 'cli'" in refused.value.message
        assert "OMS_NATS_PASSWORD" in refused.value.message
    nobody = secured.settings.model_copy(update={"nats_url": secured.url})
    with pytest.raises(Unavailable, match="without credentials"):
        await connect(nobody, "nobody", persistent=False)


async def test_the_services_work_as_their_users_and_the_cli_places_and_reads_orders(secured: Secured):
    cli = await session(secured, "cli")
    try:
        client = Client(cli.nc, timeout_s=15)
        order = await client.call(s.ORDERS_PLACE, {"customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}]})
        assert order["status"] == "CONFIRMED"
        timeline = await client.call(s.ORDERS_EVENTS, {"order_id": order["order_id"]})
        assert {e["service"] for e in timeline["events"]} == set(SERVICES)
        assert (await client.call(s.PAYMENT_GET, {"order_id": order["order_id"]}))["status"] == "AUTHORIZED"
        assert await cli.nc.request(f"$SRV.PING.{ORDERS.name}", b"", timeout=2)
        await (await jetstream(cli.nc, secured.settings.stream_name)).stream_info(secured.settings.stream_name)
        assert cli.errors == []
    finally:
        await cli.nc.close()


async def test_the_cli_user_cannot_call_payments_reserve_release_restock_sagas_or_chaos(secured: Secured):
    before = await state(secured)
    forbidden = {
        s.PAYMENT_AUTHORIZE.subject: {
            "order_id": "ord_forbidden",
            "customer_id": "c1",
            "amount_cents": 100,
            "currency": "USD",
            "method": "card",
        },
        s.PAYMENT_REFUND.subject: {"order_id": "ord_forbidden"},
        s.PAYMENT_LIST.subject: {},
        s.INVENTORY_RESERVE.subject: {"order_id": "ord_forbidden", "items": [{"sku": "KB-101", "qty": 1}]},
        s.INVENTORY_RELEASE.subject: {"order_id": "ord_forbidden"},
        s.INVENTORY_RESTOCK.subject: {"sku": "KB-101", "qty": 5},
        s.SAGA_ABORT.subject: {"saga_id": "saga_forbidden"},
        "chaos.inventory.set": {"error_rate": 1.0},
        "chaos.payment.clear": {},
        "chaos.orders.get": {},
    }
    cli = await session(secured, "cli")
    try:

        async def attempt(subject: str, body: dict[str, Any]) -> str:
            try:
                await cli.nc.request(subject, json.dumps(body).encode(), timeout=REFUSAL_WAIT_S)
            except nats.errors.TimeoutError:
                return "no reply"
            return "answered"

        outcomes = await asyncio.gather(*(attempt(subject, body) for subject, body in forbidden.items()))
        assert dict(zip(forbidden, outcomes, strict=True)) == dict.fromkeys(forbidden, "no reply")
        for subject in forbidden:
            assert cli.refused(f'publish to "{subject}"'), (subject, cli.errors)
        assert cli.nc.is_connected
    finally:
        await cli.nc.close()
    assert await state(secured) == before


async def test_the_cli_user_cannot_read_another_users_inbox_or_the_events(secured: Secured):
    cli = await session(secured, "cli")
    admin = await session(secured, "admin")
    try:
        heard: list[bytes] = []

        async def keep(msg: Any) -> None:
            heard.append(msg.data)

        for subject in (f"{inbox_prefix('orders')}.>", "events.>", s.PAYMENT_AUTHORIZE.subject):
            await cli.nc.subscribe(subject, cb=keep)
        await cli.nc.flush()
        await asyncio.sleep(0.1)
        await admin.nc.publish(f"{inbox_prefix('orders')}.secret", b"a reply meant for the order service")
        await admin.nc.flush()
        await asyncio.sleep(0.2)
        assert heard == []
        for subject in (f"{inbox_prefix('orders')}.>", "events.>", s.PAYMENT_AUTHORIZE.subject):
            assert cli.refused(f'subscription to "{subject}"'), (subject, cli.errors)
    finally:
        await cli.nc.close()
        await admin.nc.close()


async def requests_answered(nc: Any, service: str, endpoint: str) -> int:
    stats = json.loads((await nc.request(f"$SRV.STATS.{service}", b"", timeout=2)).data)
    return next(e["num_requests"] for e in stats["endpoints"] if e["name"] == endpoint)


async def test_no_reply_subject_a_client_names_puts_a_message_into_the_stream(secured: Secured):
    """A service, micro's $SRV endpoints and the JetStream API answer whatever reply subject a request
    names; across the account boundary the answer goes back into the caller's own account."""
    admin = await session(secured, "admin")
    cli = await session(secured, "cli")
    try:
        js = await jetstream(admin.nc, secured.settings.stream_name)
        before = (await js.stream_info(secured.settings.stream_name)).state
        heard: list[str] = []

        async def keep(msg: Any) -> None:
            heard.append(msg.subject)

        # admin's account has the events as a live feed: its forged replies land there, and only there.
        await admin.nc.subscribe("events.>", cb=keep)
        await admin.nc.flush()
        answered = await requests_answered(admin.nc, "orders", "get")
        targets = (
            "$SRV.PING",
            "$SRV.STATS",
            "$SRV.INFO.orders",
            f"JS.OMS.API.STREAM.INFO.{secured.settings.stream_name}",
        )
        for who in (cli, admin):
            for n, subject in enumerate(("orders.get", *targets)):
                await who.nc.publish(subject, b'{"order_id": "ord_x"}', reply=f"events.payment.payment_authorized.o{n}")
            await who.nc.flush()
        await admin.nc.publish("chaos.orders.get", b"{}", reply="events.orders.order_confirmed.ord_y")
        await admin.nc.flush()
        await wait_for(
            lambda: requests_answered(admin.nc, "orders", "get"), what="orders.get to have answered", timeout=5
        )
        await wait_for(lambda: len(heard) >= 6, what="admin's own forged replies, in its own account")
        assert await wait_for(lambda: requests_answered(admin.nc, "orders", "get")) >= answered + 2
        # Each service has answered (a request after the forged ones comes back) ...
        for name in SERVICES:
            await admin.nc.request(f"$SRV.PING.{name}", b"", timeout=2)
        after = (await js.stream_info(secured.settings.stream_name)).state
        # ... and not one message more is in the stream.
        assert (after.messages, after.last_seq) == (before.messages, before.last_seq)
        assert cli.errors == []
    finally:
        await cli.nc.close()
        await admin.nc.close()


async def test_a_stock_client_with_default_settings_works_as_cli(secured: Secured):
    """The `nats` CLI, nats.js and nats-py use `_INBOX.<id>` unless told otherwise."""
    nc = await nats.connect(secured.url, user="cli", password=secured.creds["cli"].password, allow_reconnect=False)
    try:
        client = Client(nc, timeout_s=15)
        order = await client.call(
            s.ORDERS_PLACE, {"customer_id": "stock-client", "items": [{"sku": "KB-101", "qty": 1}]}
        )
        assert order["status"] == "CONFIRMED"
        assert (await client.call(s.ORDERS_GET, {"order_id": order["order_id"]}))["order_id"] == order["order_id"]
        # `nats micro ls`: every service answers $SRV.INFO.
        inbox, infos = nc.new_inbox(), []

        async def keep(msg: Any) -> None:
            infos.append(json.loads(msg.data)["name"])

        await nc.subscribe(inbox, cb=keep)
        await nc.publish("$SRV.INFO", b"", reply=inbox)
        await wait_for(lambda: set(infos) == set(SERVICES), what="all three services in `nats micro ls`")
    finally:
        await nc.close()


async def test_a_client_hears_no_replies_but_its_own_accounts(secured: Secured):
    """`cli` may hear `_INBOX.>`, but only in its account: not admin's answers nor the services' calls to
    each other; and admin's account hears nothing of cli's. (Connections of one user share its inboxes.)"""
    snoop_cli = await session(secured, "cli")
    snoop_admin = await session(secured, "admin")
    buyer = await session(secured, "cli")
    operator = await session(secured, "admin")
    try:
        heard: dict[str, list[bytes]] = {"cli": [], "admin": []}
        for who, snoop in (("cli", snoop_cli), ("admin", snoop_admin)):

            async def keep(msg: Any, who: str = who) -> None:
                heard[who].append(msg.data)

            await snoop.nc.subscribe("_INBOX.>", cb=keep)
            await snoop.nc.flush()
        line = [{"sku": "KB-101", "qty": 1}]
        for who, customer in ((buyer, "seen-by-cli-only"), (operator, "seen-by-admin-only")):
            order = await Client(who.nc, timeout_s=15).call(s.ORDERS_PLACE, {"customer_id": customer, "items": line})
            assert order["status"] == "CONFIRMED"
        await wait_for(lambda: any(b"seen-by-admin-only" in m for m in heard["admin"]), what="admin's own replies")
        assert not any(b"seen-by-admin-only" in m for m in heard["cli"])
        assert not any(b"seen-by-cli-only" in m for m in heard["admin"])
        # The order service's calls to inventory and payment answer on its own inbox, inside OMS.
        assert not any(b'"reservation_id"' in m or b'"payment_id"' in m for m in heard["cli"] + heard["admin"])
        assert snoop_cli.errors == [] and snoop_admin.errors == []
    finally:
        for who in (snoop_cli, snoop_admin, buyer, operator):
            await who.nc.close()


def readme_nats_commands() -> list[list[str]]:
    """The `nats` commands of the README's security section, split as a shell would."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("With the `nats` CLI", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("nats ")]


async def test_the_readmes_nats_commands_work_verbatim_from_a_stock_client(secured: Secured):
    """Each command as the `nats` CLI sends it: default inbox, the user and password it names."""
    commands = readme_nats_commands()
    assert {tuple(c[5:7]) for c in commands} >= {("--password", "$PW"), ("--password", "$ADMIN")}
    secrets_of = {"$PW": secured.creds["cli"].password, "$ADMIN": secured.creds["admin"].password}
    placed: dict[str, Any] = {}
    for argv in commands:
        assert argv[:3] == ["nats", "-s", "$URL"] and argv[3] == "--user", argv
        user, verb = argv[4], argv[7:]
        nc = await nats.connect(secured.url, user=user, password=secrets_of[argv[6]], allow_reconnect=False)
        try:
            if verb[0] == "req":
                subject, body = verb[1], verb[2].replace("ord_...", placed.get("order_id", "ord_x"))
                headers = dict([verb[verb.index("-H") + 1].split(":", 1)]) if "-H" in verb else None
                reply = json.loads((await nc.request(subject, body.encode(), timeout=15, headers=headers)).data)
                assert reply["ok"], (argv, reply)
                placed = reply["result"] if subject == s.ORDERS_PLACE.subject else placed
            elif verb == ["micro", "ls"]:
                inbox, names = nc.new_inbox(), []

                async def keep(msg: Any, names: list[str] = names) -> None:
                    names.append(json.loads(msg.data)["name"])

                await nc.subscribe(inbox, cb=keep)
                await nc.publish("$SRV.INFO", b"", reply=inbox)
                await wait_for(lambda names=names: set(names) == set(SERVICES), what="`nats micro ls`")
            elif verb[0] == "sub":
                heard: list[str] = []

                async def note(msg: Any, heard: list[str] = heard) -> None:
                    heard.append(msg.subject)

                await nc.subscribe(verb[1], cb=note)
                await nc.flush()
                cli = Client(await nats.connect(secured.url, user="cli", password=secrets_of["$PW"]), timeout_s=15)
                order = await cli.call(
                    s.ORDERS_PLACE, {"customer_id": "watched", "items": [{"sku": "KB-101", "qty": 1}]}
                )
                await cli.nc.close()
                await wait_for(
                    lambda heard=heard, oid=order["order_id"]: any(oid in h for h in heard), what="events live"
                )
            elif verb[:1] == ["--js-api-prefix"]:
                assert verb[2:4] == ["stream", "info"], argv
                info = await nc.jetstream(prefix=verb[1]).stream_info(verb[4])
                assert info.config.name == secured.settings.stream_name
            else:
                pytest.fail(f"the test does not know how to run {argv}")
        finally:
            await nc.close()
    assert placed.get("status") == "CONFIRMED"


async def test_a_service_user_cannot_serve_or_call_another_services_subjects(secured: Secured):
    inventory = await session(secured, "inventory")
    payment = await session(secured, "payment")
    try:
        await inventory.nc.subscribe(s.PAYMENT_AUTHORIZE.subject, queue="payment")
        await inventory.nc.subscribe("chaos.payment.set", queue="payment")
        await inventory.nc.subscribe("inventory.probe")  # its own subjects only in its queue group
        await inventory.nc.subscribe("inventory.probe", queue="inventory")
        await inventory.nc.flush()
        await payment.nc.publish(s.INVENTORY_RESERVE.subject, b"{}")  # only the order service calls it
        await payment.nc.publish("events.orders.order_confirmed.ord_x", b"{}")  # nor forges its events
        await payment.nc.flush()
        await asyncio.sleep(0.2)
        assert inventory.refused(f'subscription to "{s.PAYMENT_AUTHORIZE.subject}"'), inventory.errors
        assert inventory.refused('subscription to "chaos.payment.set"'), inventory.errors
        assert sum("inventory.probe" in e for e in inventory.errors) == 1, inventory.errors
        assert payment.refused(f'publish to "{s.INVENTORY_RESERVE.subject}"'), payment.errors
        assert payment.refused('publish to "events.orders.order_confirmed.ord_x"'), payment.errors
    finally:
        await inventory.nc.close()
        await payment.nc.close()


async def test_admin_may_restock_and_a_service_may_rebuild_itself_by_replay(secured: Secured, tmp_path: Path):
    nc = await connect(secured.as_user("admin"), "admin", persistent=False)
    try:
        client = Client(nc, timeout_s=5)
        product = await client.call(s.INVENTORY_RESTOCK, {"sku": "KB-101", "qty": 1}, idempotency_key="auth-restock")
        assert product["sku"] == "KB-101"
        with pytest.raises(NotFound):
            await client.call(s.PAYMENT_GET, {"order_id": "ord_none"})
    finally:
        await nc.close()
    # `python -m payment_svc --recover` reads the stream as the payment user, into a home of its own here.
    elsewhere = secured.as_user("payment").model_copy(update={"home": tmp_path / "rebuilt"})
    stats = await recover(elsewhere, PAYMENT)
    assert stats.applied == stats.total > 0


async def test_a_service_looks_its_outbox_up_in_the_stream_as_its_own_user(secured: Secured, tmp_path: Path):
    from bus.db import Database
    from bus.outbox import Relay

    nc = await connect(secured.as_user("payment"), "payment-relay", persistent=False)
    try:
        js, stream = nc.jetstream(), secured.settings.stream_name
        async with Database(tmp_path / "payment.db", "payment", PAYMENT.schema) as db:
            _, rows = await db.commit(lambda tx: [tx.emit("lookup_probe", f"p{i}", {}) for i in range(2)])
            # The first one is in the stream already (its relay was killed before deleting it).
            await js.publish(rows[0].subject, rows[0].body, stream=stream, headers={"Nats-Msg-Id": rows[0].event_id})
            relay = Relay(js, db, stream)
            await relay.start()
            assert await relay.drain(10)
            await relay.stop()
        assert relay.failures == 0 and relay.found_stored == 1 and relay.published_total == 1
    finally:
        await nc.close()


async def test_oms_up_reuses_the_credentials_and_a_running_server_reloads_new_ones(tmp_path: Path):
    settings = Settings(home=tmp_path / "home")
    stack_settings = stack.StackSettings(nats_port=0)
    try:
        _, url = stack.ensure_nats(settings, stack_settings)
        first = auth.ensure_credentials(settings)
        _, again = stack.ensure_nats(settings, stack_settings)  # running: left alone, credentials kept
        assert again == url and auth.ensure_credentials(settings) == first
        (auth.credentials_dir(settings) / "cli.json").unlink()  # lost: a new password, and the server reloads
        stack.ensure_nats(settings, stack_settings)
        fresh = auth.load(settings, "cli")
        assert fresh is not None and fresh.password != first["cli"].password
        as_cli = auth.login(settings, "cli")

        async def accepted() -> bool:
            try:
                nc = await connect(as_cli, "reloaded", persistent=False)
            except Unavailable:
                return False
            await nc.close()
            return True

        await wait_for(accepted, timeout=10, what="nats-server to reload the new credentials")
    finally:
        await asyncio.to_thread(stack.down, settings, stack_settings)


async def test_a_cli_command_the_server_refuses_says_so_instead_of_timing_out(secured: Secured):
    before = await state(secured)
    with pytest.raises(Unavailable) as refused:
        await session_request(
            secured.as_user("cli"), s.INVENTORY_RESTOCK, {"sku": "KB-101", "qty": 1}, timeout_s=REFUSAL_WAIT_S, key="k1"
        )
    assert "refused user 'cli'" in refused.value.message and "inventory.restock" in refused.value.message
    assert "admin" in refused.value.message
    assert await state(secured) == before


async def test_admin_cannot_make_a_consumer_that_delivers_the_stream_into_the_services(secured: Secured):
    """Found by the hostile run: a push consumer's deliver subject can be any subject of the stream's account
    (`orders.place`), and with explicit acks it is redelivered forever. Operators read by direct gets."""
    admin = await session(secured, "admin")
    try:
        stream = secured.settings.stream_name
        js = await jetstream(admin.nc, stream)
        before = (await js.stream_info(stream)).state.consumer_count
        body = json.dumps(
            {
                "stream_name": stream,
                "config": {"deliver_subject": "orders.place", "deliver_group": "orders", "ack_policy": "explicit"},
            }
        ).encode()
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):  # not imported
            await admin.nc.request(f"JS.OMS.API.CONSUMER.CREATE.{stream}", body, timeout=REFUSAL_WAIT_S)
        # OPS's own JetStream API answers, but OPS has no JetStream: the stream is not there to consume.
        reply = json.loads((await admin.nc.request(f"$JS.API.CONSUMER.CREATE.{stream}", body, timeout=2)).data)
        assert reply["error"]["err_code"] == 10039, reply  # JetStream not enabled for account
        assert (await js.stream_info(stream)).state.consumer_count == before
    finally:
        await admin.nc.close()


async def test_a_connection_whose_first_look_for_the_stream_went_unanswered_finds_it_later(tmp_path: Path):
    """Found by a cluster test that failed now and then: an admin connection made while the cluster elected
    the stream's leader asked where the stream's API is, heard nothing, and kept `$JS.API` (where its
    account has no JetStream) for good, so every later stream request answered 'JetStream not enabled'. A
    paused server is the same silence."""
    home = tmp_path / "paused"
    base = Settings(home=home, metrics_port_orders=0, metrics_port_inventory=0, metrics_port_payment=0)
    proc, url = natsserver.start(home / "nats", config=auth.prepare(base))
    try:
        found = Secured(url, base, auth.ensure_credentials(base))
        orders = await connect(found.as_user("orders"), "setup", persistent=False)
        try:
            await ensure_stream(orders, orders.jetstream(), base)
        finally:
            await orders.close()
        nc = await connect(found.as_user("admin"), "paused", persistent=False)
        try:
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(nats.errors.TimeoutError):
                    await api_prefix(nc, base.stream_name)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            info = await (await jetstream(nc, base.stream_name)).stream_info(base.stream_name)
            assert info.config.name == base.stream_name
            assert await api_prefix(nc, base.stream_name) == "JS.OMS.API"
        finally:
            await nc.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
