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
import contextlib
import json
import logging
import random
import time
import weakref
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.subscription import Subscription
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
            info = await _ensure(nc, js, settings)
            if in_cluster(nc) and not (info.cluster and info.cluster.leader):
                raise _NoLeaderYet  # a stream just created or changed takes writes once it has elected its leader
            return info
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


class _NoLeaderYet(Exception):
    def __str__(self) -> str:
        return "the stream has no leader yet"


def _passing(exc: BaseException) -> bool:
    if isinstance(exc, _NoLeaderYet):
        return True
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

JS_NOT_ENABLED_FOR_ACCOUNT = 10039  # the JetStream API's err_code
_API_PREFIX: weakref.WeakKeyDictionary[Nats, str] = weakref.WeakKeyDictionary()


async def api_prefix(nc: Nats, stream: str) -> str:
    """Where this connection reaches the event stream's API: `$JS.API` inside the OMS account (or on a
    server without accounts), `JS.OMS.API` from a client account (`bus.accounts`). Found by asking the
    stream's info at each, and kept for the connection once the stream's JetStream answered there (its
    error is an answer too). Elsewhere a wrong prefix has no responders, or the server answers for an
    account without JetStream (`$JS.API` from a client account). A probe that met silence (a cluster
    electing the stream's leader, a paused server) settles nothing: it raises nats' TimeoutError and the
    next call asks again, where a guess kept then sent every later request of the connection where
    nothing answers."""
    prefix = _API_PREFIX.get(nc)
    if prefix is not None:
        return prefix
    silent = False
    for candidate in (JS_PREFIX, "$JS.API"):
        try:
            reply = await nc.request(f"{candidate}.STREAM.INFO.{stream}", b"", timeout=2.0)
        except nats.errors.NoRespondersError:
            continue
        except nats.errors.TimeoutError:
            silent = True
            continue
        if _api_error_code(reply.data) == JS_NOT_ENABLED_FOR_ACCOUNT:
            continue
        _API_PREFIX[nc] = candidate
        return candidate
    if silent:
        raise nats.errors.TimeoutError
    return "$JS.API"  # no JetStream for this connection: its requests will say so; asked again next time


def _api_error_code(data: bytes) -> int | None:
    try:
        error = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("err_code") if isinstance(error, dict) else None


async def jetstream(nc: Nats, stream: str) -> JetStreamContext:
    """A JetStream context on the event stream's API as this connection reaches it (`api_prefix`)."""
    return nc.jetstream(prefix=await api_prefix(nc, stream))


# -- reading the stream without a consumer --------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    """One message of the stream as a direct get returns it."""

    seq: int
    subject: str
    data: bytes


class Reader:
    """Reads the event stream in order by batched direct gets (`$JS.API.DIRECT.GET`): no consumer, so a
    client account needs no right to make one (a push consumer could aim the stream at any subject of
    the services' account), nothing is left behind, and any replica answers, so the loss of a node does
    not stop it. It keeps the stream sequence it has read to; `next_batch` polls past the end."""

    POLL_S = 0.1  # how soon a reader at the end asks again
    REQUEST_TIMEOUT_S = 2.0

    def __init__(self, nc: Nats, stream: str) -> None:
        self.nc = nc
        self.stream = stream
        self.subject = "events.>"
        self.next_seq = 1
        self._inbox = ""
        self._sub: Subscription | None = None
        self._asked = 0

    async def open(self, subject: str, *, from_start: bool) -> Reader:
        """Read `subject` from the stream's first message, or from the next one published."""
        self.subject = subject
        self._prefix = await api_prefix(self.nc, self.stream)
        if not from_start:
            self.next_seq = (await self._info()).state.last_seq + 1
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(f"{self._inbox}.*")
        return self

    async def _info(self) -> js_api.StreamInfo:
        try:
            return await self.nc.jetstream(prefix=self._prefix).stream_info(self.stream)
        except NotFoundError:
            raise Unavailable(
                f"stream {self.stream} not found: the services create it when they start (`oms up`)"
            ) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"cannot read {self.stream}: {exc!r}") from None

    async def next_batch(self, timeout_s: float, batch: int = 256) -> list[Stored]:
        """The next messages on the subject in stream order; empty when none came within `timeout_s`."""
        give_up = time.monotonic() + timeout_s
        while True:
            found = await self._ask(batch)
            if found or time.monotonic() + self.POLL_S > give_up:
                return found
            await asyncio.sleep(self.POLL_S)

    async def _ask(self, batch: int) -> list[Stored]:
        assert self._sub is not None, "open the reader first"
        self._asked += 1
        reply = f"{self._inbox}.{self._asked}"  # answers to an earlier, abandoned ask are told apart
        body = json.dumps({"seq": self.next_seq, "batch": batch, "next_by_subj": self.subject}).encode()
        found: list[Stored] = []
        try:
            await self.nc.publish(f"{self._prefix}.DIRECT.GET.{self.stream}", body, reply=reply)
            deadline = time.monotonic() + self.REQUEST_TIMEOUT_S
            while True:
                msg = await self._sub.next_msg(timeout=max(0.01, deadline - time.monotonic()))
                if msg.subject != reply:
                    continue
                headers = msg.headers or {}
                if "Status" in headers:  # 204: the batch's end; 404: nothing from there; anything else: try again
                    break
                seq = int(headers.get("Nats-Sequence", 0))
                if seq >= self.next_seq:
                    found.append(Stored(seq, headers.get("Nats-Subject", ""), msg.data))
        except (nats.errors.TimeoutError, TimeoutError):
            pass  # a node lost mid-answer: what came is kept, the rest is asked for again
        except nats.errors.ConnectionClosedError:
            raise Unavailable("lost the connection to NATS while reading events") from None
        if found:
            self.next_seq = found[-1].seq + 1
        return found

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
