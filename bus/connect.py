"""Connecting to NATS: long-lived service connections and short-lived CLI ones."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as Nats

from bus.accounts import inbox_prefix
from bus.errors import Unavailable
from bus.frames import HardenedNats
from bus.settings import Settings

log = logging.getLogger(__name__)

SHORT_RECONNECTS = 8  # per server, for a short-lived connection: rides out a node loss, not an outage
ERROR_LOG_EVERY_S = 10.0  # one line per kind of error at most this often: a client can cause some at will
ERROR_KINDS_KEPT = 64


class _ErrorLog:
    """The warning a connection logs for what its error callback hears, at most once per kind of error every
    `ERROR_LOG_EVERY_S`, the next one counting those left out. Some a client causes as fast as it sends:
    nats.micro raises for every `$SRV` request without a reply subject."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._next: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def warn(self, exc: Exception) -> None:
        kind = f"{type(exc).__name__}: {exc}"[:48]  # the error, without the subject or id that may follow
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._unlogged[kind] += 1
            return
        if len(self._next) >= ERROR_KINDS_KEPT:
            self._next.clear()
        self._next[kind] = now + ERROR_LOG_EVERY_S
        extra = {"error": repr(exc), "connection": self.name, "unlogged": self._unlogged.pop(kind, 0)}
        log.warning("nats error", extra=extra)


def is_refusal(exc: BaseException) -> bool:
    """The server refused the credentials. nats-py raises a bare `nats.errors.Error("nats: 'Authorization
    Violation'")` when that happens while connecting, and AuthorizationError only once connected."""
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


class _Refused(Exception):
    """Raised from the error callback to stop nats-py retrying refused credentials forever."""


def refused_message(url: str, user: str | None) -> str:
    who = f"user {user!r}" if user else "a connection without credentials"
    return (
        f"NATS at {url} refused {who} (authorization violation): check OMS_NATS_USER / OMS_NATS_PASSWORD, "
        "or the credentials under OMS_HOME/credentials"
    )


async def connect(
    settings: Settings,
    name: str,
    *,
    user: str | None = None,
    password: str | None = None,
    persistent: bool = True,
    on_error: Callable[[Exception], None] | None = None,
    on_drop: Callable[[str], None] | None = None,
) -> Nats:
    """Connect as `name` to any server of the list. Persistent connections reconnect forever, but refused
    credentials fail at once; short-lived ones (the CLI's) reconnect through a node loss a bounded number
    of times, and fail fast and clearly when no server answers. `on_error` hears what the server reports
    once connected (e.g. a permissions violation: the server drops the message and says so only here).
    The client drops every message it cannot decode instead of losing the connection (`bus.frames`);
    `on_drop` hears why."""
    servers = settings.nats_servers()
    url = ",".join(servers)
    user = user or settings.nats_user
    password = password or settings.nats_password
    connecting = True
    errors = _ErrorLog(name)

    async def report(exc: Exception) -> None:
        if connecting and is_refusal(exc):
            raise _Refused from None  # a wrong password does not get better by retrying it
        if on_error is not None and not connecting:
            on_error(exc)
        if persistent:
            errors.warn(exc)

    async def on_disconnect() -> None:
        nc.connection_dropped()
        if persistent and not connecting:  # a short-lived connection's end is no news
            log.warning("nats disconnected", extra={"connection": name})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"connection": name})

    options: dict = dict(
        servers=servers,
        name=name,
        user=user,
        password=password,
        inbox_prefix=inbox_prefix(user),
        error_cb=report,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        connect_timeout=2,
    )
    if persistent:
        options |= dict(max_reconnect_attempts=-1, reconnect_time_wait=0.25, ping_interval=5)
    else:
        # nats-py gives up the first connect at the first server that fails unless it may reconnect, so a
        # short-lived connection may: each server of the list a few times (about 2 s), then it fails.
        options |= dict(max_reconnect_attempts=SHORT_RECONNECTS, reconnect_time_wait=0.25, ping_interval=5)

    nc = HardenedNats(name, on_drop)
    try:
        await nc.connect(**options)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        if isinstance(exc, _Refused) or (isinstance(exc, nats.errors.Error) and is_refusal(exc)):
            raise Unavailable(refused_message(url, user), {"url": url, "user": user}) from None
        if isinstance(exc, OSError | nats.errors.Error | TimeoutError):
            raise Unavailable(
                f"cannot reach NATS at {url} ({type(exc).__name__}): start it with `oms up` or set OMS_NATS_URL",
                {"url": url},
            ) from None
        raise
    connecting = False
    return nc
