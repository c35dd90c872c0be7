"""A service's lifecycle: one AsyncExitStack from database to metrics, stopped by SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import nats.errors
from nats.aio.client import Client as Nats

from bus import __version__, home, logs, loop
from bus.client import Client
from bus.connect import connect
from bus.contract import Health, HealthQuery
from bus.db import Database
from bus.errors import Unavailable
from bus.filelock import DatabaseInUse
from bus.ids import iso
from bus.metrics import Metrics
from bus.outbox import Relay
from bus.replay import ReplayError
from bus.replay import recover as recover_by_replay
from bus.service import Call, ServiceRunner
from bus.settings import Settings
from bus.spec import Kernel, ServiceSpec
from bus.sqlite import SqliteTooOld
from bus.stream import ensure_stream
from bus.subjects import HEALTH

__all__ = ["Kernel", "ServiceSpec", "main", "running", "serve_forever"]  # the spec's two re-exported: cli imports them

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # the most one phase of a stop waits (requests in flight, the outbox, the connection's drain)


class StopBudget:
    """One time budget for a whole graceful stop, spent by its phases in turn: each gets what the ones
    before it left, at most STOP_GRACE_S. Started by the first phase that asks."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self._ends: float | None = None

    def left(self) -> float:
        if self._ends is None:
            self._ends = time.monotonic() + self.total_s
        return max(0.0, min(STOP_GRACE_S, self._ends - time.monotonic()))


VERSION = __version__


@asynccontextmanager
async def running(
    spec: ServiceSpec,
    settings: Settings,
    *,
    serve_metrics: bool = True,
    recover: bool = False,
    freeze_gc: bool = False,
) -> AsyncIterator[Kernel]:
    """Start the service and yield it; leaving the block drains and stops everything in reverse.

    With `recover`, the database is first rebuilt from the event stream (bus.replay). With `freeze_gc`
    (a service's own process), what the start made is frozen out of the garbage collector before the
    service builds its endpoints and resumes its sagas: nothing that serves requests is frozen.
    """
    if recover:
        await recover_by_replay(settings, spec)
    budget = StopBudget(settings.stop_budget_s)
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(
            Database(
                settings.db_path(spec.name),
                spec.name,
                spec.schema,
                forget_after_s=settings.outbox_forget_after_s,
                fsync=settings.durability == "fsync",
            )
        )
        metrics = Metrics(spec.name)
        nc = await connect(
            settings,
            spec.name,
            user=settings.nats_user,
            password=settings.nats_password,
            on_drop=lambda reason: metrics.child(metrics.dropped_messages, reason).inc(),
        )
        stack.push_async_callback(lambda: _close_nats(nc, budget.left()))
        js = nc.jetstream()
        await ensure_stream(nc, js, settings)
        relay = Relay(js, db, settings.stream_name)
        await relay.start()
        stack.push_async_callback(relay.stop)
        # Runs before relay.stop and after the runner and the sagas stopped: what was committed goes out.
        stack.push_async_callback(lambda: relay.drain(budget.left()))
        runner = ServiceRunner(nc, spec.name, settings, version=VERSION, description=spec.description, metrics=metrics)
        kernel = Kernel(
            settings=settings,
            name=spec.name,
            nc=nc,
            js=js,
            db=db,
            relay=relay,
            client=Client(nc, timeout_s=settings.saga.step_timeout_ms / 1000),
            runner=runner,
            metrics=metrics,
            stack=stack,
        )
        if freeze_gc:
            loop.freeze_gc()
        await spec.build(kernel)
        runner.add(HEALTH[spec.name], _health_handler(kernel, time.time()))
        metrics.outbox_backlog.set_function(lambda: relay.backlog)
        metrics.outbox_lag.set_function(lambda: relay.oldest_pending_age_s)
        metrics.events_published.set_function(lambda: relay.published_total)
        await runner.start()
        stack.push_async_callback(lambda: runner.stop(budget.left()))
        await _answering(nc, spec.name)
        if serve_metrics:
            server = metrics.serve(settings.metrics_host, settings.metrics_port(spec.name))
            if server is not None:
                kernel.extras["metrics_server"] = server
                stack.push_async_callback(asyncio.to_thread, server.stop)
        log.info("service ready", extra={"pid": os.getpid(), "nats": settings.resolved_nats_url()})
        yield kernel
        log.info("service stopping")


async def _answering(nc: Nats, service: str, timeout_s: float = 5.0) -> None:
    """Return once the server routes requests to this service: right after its subscriptions were
    flushed, a request can still (rarely) find no responders for a few milliseconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await nc.request(f"$SRV.PING.{service}", b"", timeout=1.0)
            return
        except nats.errors.NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.005)


def _health_handler(k: Kernel, started: float) -> Callable[[HealthQuery, Call], Awaitable[Health]]:
    """`<service>.health`: liveness beyond PING: backlog, breakers, sagas in flight, faults in force."""

    async def health(cmd: HealthQuery, call: Call) -> Health:
        extra = k.extras.get("health")
        return Health(
            service=k.name,
            version=VERSION,
            pid=os.getpid(),
            started_at=iso(started),
            uptime_s=round(time.time() - started, 3),
            in_flight=k.runner.in_flight,
            outbox_backlog=k.relay.backlog,
            outbox_lag_s=round(k.relay.oldest_pending_age_s, 3),
            events_published=k.relay.published_total,
            db_commits=k.db.commits,
            db_units=k.db.units,
            chaos=k.runner.chaos.state(),
            **(extra() if callable(extra) else {}),
        )

    return health


async def _close_nats(nc: Nats, grace_s: float) -> None:
    # Draining needs the server; with NATS gone (it may be stopped first) it would only wait out its timeout.
    if nc.is_connected and grace_s > 0:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), grace_s)
    with contextlib.suppress(Exception):
        await nc.close()


async def serve_forever(spec: ServiceSpec, settings: Settings, *, recover: bool = False) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with running(spec, settings, recover=recover, freeze_gc=True):
        await stop.wait()


def main(spec: ServiceSpec, argv: Sequence[str] | None = None) -> None:
    """`python -m <service> [--recover]`: settings from the environment, JSON logs, uvloop when installed."""
    package = getattr(sys.modules["__main__"].__spec__, "parent", None) or spec.name
    parser = argparse.ArgumentParser(prog=f"python -m {package}", description=spec.description)
    parser.add_argument(
        "--recover",
        action="store_true",
        help=f"rebuild the database from the event stream before serving (stop the {spec.name} service first)",
    )
    args = parser.parse_args(argv)
    home.keep_private()  # its database, WAL and lock files, and anything else it writes: 0600 (bus.home)
    settings = Settings()
    logs.setup(spec.name, settings.log_level)
    try:
        loop.run(serve_forever(spec, settings, recover=args.recover))
    except ReplayError as exc:
        log.error("recovery failed", extra={"error": str(exc)})
        sys.exit(f"{spec.name}: recovery by replay failed: {exc}")
    except Unavailable as exc:  # e.g. refused credentials: retrying does not help, and the message says why
        log.error("cannot start", extra={"error": exc.message})
        sys.exit(f"{spec.name}: {exc.message}")
    except (DatabaseInUse, SqliteTooOld) as exc:  # another instance or a rebuild has its file; or too old an SQLite
        log.error("cannot start", extra={"error": str(exc)})
        sys.exit(f"{spec.name}: {exc}")
