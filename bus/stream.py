"""The event stream OMS_EVENTS: its configuration, its setup through a cluster's elections, and its API's address.

Every service calls `ensure_stream` at start. On a cluster (the server says
it is in one) the stream is created with three replicas unless
OMS_STREAM_REPLICAS says otherwise; an update always names the replicas it
wants, because an update without them resets a stream to one. Left at 0 the
setting never lowers what the stream has, so restarting a service against an
R3 stream leaves it R3, and setting it converts a stream in place.

Right after a cluster starts, or while a node is lost, JetStream may have no
meta leader for a second or two: its API then times out, has no responders,
or answers 503. Those are retried until `SETUP_DEADLINE_S`; anything else is
a configuration problem and raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref

import nats.errors
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from bus.accounts import JS_PREFIX
from bus.errors import Unavailable
from bus.settings import Settings

log = logging.getLogger(__name__)

SETUP_DEADLINE_S = 30.0
CLUSTER_REPLICAS = 3
STREAM_NAME_IN_USE = 10058
# Errors JetStream answers while it has no leader or too few peers yet: worth waiting out.
_PASSING = {10005, 10008, 10023}  # no suitable peers, temporarily unavailable, insufficient resources


def in_cluster(nc: Nats) -> bool:
    """The server we are connected to says it belongs to a cluster (its INFO names one)."""
    return bool(getattr(nc, "_server_info", {}).get("cluster"))


def stream_config(settings: Settings, replicas: int) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=settings.stream_name,
        subjects=["events.>"],
        storage=js_api.StorageType.FILE,
        retention=js_api.RetentionPolicy.LIMITS,
        max_age=float(settings.stream_max_age_s),
        duplicate_window=float(settings.stream_duplicate_window_s),
        discard=js_api.DiscardPolicy.OLD,
        num_replicas=replicas,
        allow_direct=True,  # reads served by any replica (an order's timeline, the audit)
    )


def _same(have: js_api.StreamConfig, want: js_api.StreamConfig) -> bool:
    fields = ("subjects", "storage", "retention", "max_age", "duplicate_window", "discard", "num_replicas")
    return all(getattr(have, f) == getattr(want, f) for f in fields) and bool(have.allow_direct)


async def ensure_stream(
    nc: Nats, js: JetStreamContext, settings: Settings, *, deadline_s: float = SETUP_DEADLINE_S
) -> js_api.StreamInfo:
    """Create OMS_EVENTS, or bring its settings up to date (its replicas included); safe to call from every
    service at once, and through a cluster's election."""
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        try:
            return await _ensure(nc, js, settings)
        except Exception as exc:
            if not _passing(exc) or time.monotonic() > deadline:
                if _passing(exc):
                    raise Unavailable(
                        f"JetStream could not set up {settings.stream_name} within {deadline_s:g}s ({_describe(exc)}): "
                        "is every server of the cluster up? a stream of "
                        f"{settings.stream_replicas or CLUSTER_REPLICAS} replicas needs as many servers",
                        {"stream": settings.stream_name},
                    ) from None
                raise
            attempt += 1
            delay = random.uniform(0.05, min(1.0, 0.1 * 2**attempt))
            log.warning("stream setup waits for JetStream", extra={"error": _describe(exc), "retry_in_s": delay})
            await asyncio.sleep(delay)


async def _ensure(nc: Nats, js: JetStreamContext, settings: Settings) -> js_api.StreamInfo:
    try:
        have = await js.stream_info(settings.stream_name)
    except NotFoundError:
        replicas = settings.stream_replicas or (CLUSTER_REPLICAS if in_cluster(nc) else 1)
        try:
            return await js.add_stream(stream_config(settings, replicas))
        except APIError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:  # another service created it meanwhile: update that one
                raise
            have = await js.stream_info(settings.stream_name)
    replicas = settings.stream_replicas or have.config.num_replicas or 1
    want = stream_config(settings, replicas)
    if _same(have.config, want):
        return have
    if replicas != have.config.num_replicas:
        log.info("stream replicas change", extra={"from": have.config.num_replicas, "to": replicas})
    return await js.update_stream(want)


def _passing(exc: BaseException) -> bool:
    if isinstance(exc, nats.errors.NoRespondersError | nats.errors.TimeoutError | ServiceUnavailableError):
        return True
    if isinstance(exc, nats.errors.ConnectionReconnectingError | nats.errors.NoServersError):
        return True
    if isinstance(exc, APIError):
        return exc.err_code in _PASSING or exc.code == 503
    return isinstance(exc, TimeoutError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- how a connection reaches the stream's API ----------------------------------

_API_PREFIX: weakref.WeakKeyDictionary[Nats, str] = weakref.WeakKeyDictionary()


async def jetstream(nc: Nats, stream: str) -> JetStreamContext:
    """The event stream's API as this connection reaches it: `$JS.API` inside the OMS account (or on a
    server without accounts), `JS.OMS.API` from a client account (`bus.accounts`). Asked once per
    connection: the client accounts answer the stream's info there, anyone else has no responders."""
    prefix = _API_PREFIX.get(nc)
    if prefix is None:
        try:
            await nc.request(f"{JS_PREFIX}.STREAM.INFO.{stream}", b"", timeout=2.0)
            prefix = JS_PREFIX
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            prefix = "$JS.API"
        _API_PREFIX[nc] = prefix
    return nc.jetstream(prefix=prefix)
