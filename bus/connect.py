"""Connecting to NATS: long-lived service connections and short-lived CLI ones."""

from __future__ import annotations

import logging

import nats
import nats.errors
from nats.aio.client import Client as Nats

from bus.errors import Unavailable
from bus.settings import Settings

log = logging.getLogger(__name__)


def inbox_prefix(user: str | None) -> str:
    """Each user gets a private inbox prefix, so permissions can keep replies private."""
    return f"_INBOX_{user}" if user else "_INBOX"


async def connect(
    settings: Settings,
    name: str,
    *,
    user: str | None = None,
    password: str | None = None,
    persistent: bool = True,
) -> Nats:
    """Connect as `name`. Persistent connections reconnect forever; others fail fast and clearly."""
    url = settings.resolved_nats_url()
    user = user or settings.nats_user
    password = password or settings.nats_password

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc), "connection": name})

    async def on_disconnect() -> None:
        log.warning("nats disconnected", extra={"connection": name})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"connection": name})

    options: dict = dict(
        servers=[url],
        name=name,
        user=user,
        password=password,
        inbox_prefix=inbox_prefix(user),
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        connect_timeout=2,
    )
    if persistent:
        options |= dict(max_reconnect_attempts=-1, reconnect_time_wait=0.25, ping_interval=5)
    else:
        # nats-py keeps retrying a refused server when max_reconnect_attempts is 0: one attempt, then fail.
        options |= dict(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1)

    async def quiet(exc: Exception) -> None:
        return None

    if not persistent:
        options["error_cb"] = quiet
    try:
        return await nats.connect(**options)
    except nats.errors.AuthorizationError:
        raise Unavailable(
            f"NATS at {url} refused the credentials for user {user or '(none)'}: "
            "check OMS_NATS_USER / OMS_NATS_PASSWORD",
            {"url": url},
        ) from None
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        raise Unavailable(
            f"cannot reach NATS at {url} ({type(exc).__name__}): start it with `oms up` or set OMS_NATS_URL",
            {"url": url},
        ) from None
