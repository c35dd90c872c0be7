"""Fixtures: one real nats-server for the session, services in-process, a fresh OMS_HOME per test; and
none of the user's OMS_* settings anywhere (`clean_oms_environment`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import natsserver
from bus.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def clean_oms_environment() -> Iterator[None]:
    """The whole session runs without the OMS_* variables of whoever runs it: `pytest` passes whatever
    they exported (a metrics port, OMS_NATS_PORT, a home). Autouse and session-wide, so it comes before
    every other fixture, module and session ones included; a test that needs a setting sets it with
    `monkeypatch.setenv` (undone after the test) or passes it to the process it starts."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("OMS_")]:
            patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real nats-server with JetStream, on a free port, for the whole session."""
    store = tmp_path_factory.mktemp("nats")
    proc, url = natsserver.start(store)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture
async def settings(nats_server: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for one test: its own OMS_HOME, metrics off; the event stream is removed afterwards."""
    s = Settings(
        home=tmp_path / "oms",
        nats_url=nats_server,
        metrics_port_orders=0,
        metrics_port_inventory=0,
        metrics_port_payment=0,
    )
    yield s
    await delete_stream(nats_server, s.stream_name)


async def delete_stream(url: str, name: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    conn = await nats.connect(url)
    try:
        await conn.jetstream().delete_stream(name)
    except NotFoundError:
        pass
    finally:
        await conn.close()


async def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll a (sync or async) condition until it is truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[Any]:
    """A plain nats-py connection, as a user of `nats req` would have."""
    import nats

    conn = await nats.connect(settings.nats_url)
    yield conn
    await conn.close()


async def services_in(exits: Any, settings: Settings, *, serve_metrics: bool = False) -> dict[str, Any]:
    """The three services in-process on `settings`, until `exits` (an AsyncExitStack) closes; with a client
    on a connection of its own, that connection and JetStream."""
    import nats

    from bus.app import running
    from bus.client import Client
    from inventory_svc.service import SPEC as INVENTORY
    from order_svc.service import SPEC as ORDERS
    from payment_svc.service import SPEC as PAYMENT

    kernels = {}
    for spec in (INVENTORY, PAYMENT, ORDERS):
        kernels[spec.name] = await exits.enter_async_context(running(spec, settings, serve_metrics=serve_metrics))
    conn = await nats.connect(settings.nats_url)
    exits.push_async_callback(conn.close)
    return {"client": Client(conn, timeout_s=15), "nc": conn, "js": conn.jetstream(), **kernels}


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """The three services in-process on the test's nats-server, plus a client and JetStream."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as exits:
        yield await services_in(exits, settings)


async def place(
    stack: dict[str, Any],
    customer: str = "c1",
    items: tuple[tuple[str, int], ...] = (("KB-101", 1),),
    method: str = "card",
    key: str | None = None,
    wait_ms: int = 10_000,
) -> dict[str, Any]:
    """`orders.place` through the stack's client: the order as it is once its saga ended (or `wait_ms`)."""
    from bus import subjects as s

    body = {
        "customer_id": customer,
        "items": [{"sku": k, "qty": q} for k, q in items],
        "payment_method": method,
        "wait_ms": wait_ms,
    }
    return await stack["client"].call(s.ORDERS_PLACE, body, idempotency_key=key)


async def ask(nc: Any, subject: str, body: Any, key: str | None = None) -> tuple[dict, dict]:
    """One request exactly as `nats req` sends it: JSON bytes, optional Idempotency-Key header."""
    import json

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Idempotency-Key": key} if key else None
    msg = await nc.request(subject, data, timeout=5, headers=headers)
    return json.loads(msg.data), msg.headers or {}


async def stream_events(nc: Any, settings: Settings) -> list[dict]:
    """Every event in the stream, oldest first, each with the subject it was published on."""
    import json

    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    info = await js.stream_info(settings.stream_name)
    events: list[dict] = []
    if not info.state.messages:
        return events
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(settings.stream_name, seq)
        except NotFoundError:  # purged
            continue
        events.append(json.loads(msg.data) | {"subject": msg.subject})
    return events


async def outlast_duplicate_window(js: Any, stream: str, timeout: float = 30.0) -> None:
    """Return once the stream has forgotten the message ids of everything published before the call: a
    canary published now is, once publishing it again is stored instead of dropped. The canary is purged."""
    import uuid

    subject, msg_id = f"events.canary.window.{uuid.uuid4().hex}", f"canary-{uuid.uuid4().hex}"
    await js.publish(subject, b"{}", stream=stream, headers={"Nats-Msg-Id": msg_id})

    async def forgotten() -> bool:
        ack = await js.publish(subject, b"{}", stream=stream, headers={"Nats-Msg-Id": msg_id})
        return not ack.duplicate

    await wait_for(forgotten, timeout=timeout, interval=0.1, what="the stream's duplicate window to pass")
    await js.purge_stream(stream, subject=subject)


def repeated_ids(events: list[dict]) -> dict[str, int]:
    """Event ids the stream holds more than once, with how often."""
    from collections import Counter

    return {event_id: n for event_id, n in Counter(e["event_id"] for e in events).items() if n > 1}


@pytest.fixture
def client(nc: Any) -> Any:
    """A request client on the plain test connection."""
    from bus.client import Client

    return Client(nc, timeout_s=5)


@pytest.fixture
async def orders_db(tmp_path: Path) -> AsyncIterator[Any]:
    """An order service's database on a temporary file, with no relay: nothing waits for the stream."""
    from bus.db import Database
    from order_svc.service import SPEC as ORDERS

    async with Database(tmp_path / "orders.db", "orders", ORDERS.schema) as database:
        yield database


# Saga timings short enough for a kill test to see retries and compensations within seconds.
FAST_SAGA_ENV = {
    "OMS_SAGA__STEP_TIMEOUT_MS": "500",
    "OMS_SAGA__RETRY_MAX_INTERVAL_MS": "300",
    "OMS_SAGA__RETRY_MAX_ATTEMPTS": "30",
    "OMS_SAGA__DEADLINE_MS": "20000",
}


async def service_processes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, **env: str
) -> AsyncIterator[dict[str, Any]]:
    """The three services as real processes (`oms up`; nats-server is the session's), started with the fast
    saga timings and `env`; yields the settings, a client and a JetStream context, and stops them after."""
    import nats

    from bus.client import Client
    from cli import stack as oms_stack

    for name, value in {**FAST_SAGA_ENV, **env}.items():
        monkeypatch.setenv(name, value)
    await oms_stack.up(settings)
    conn = await nats.connect(settings.nats_url)
    try:
        yield {"settings": settings, "client": Client(conn, timeout_s=15), "js": conn.jetstream()}
    finally:
        await conn.close()
        oms_stack.down(settings)
