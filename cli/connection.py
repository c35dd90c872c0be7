"""The CLI's NATS connection: short-lived, fails fast, bounded in time whatever the client does, and made
as the `cli` user (client commands) or the `admin` user (operator commands: chaos, restock, recover,
saga retry/abort, audit, following the event stream).

Which credentials: `bus.auth.login` — OMS_NATS_USER/OMS_NATS_PASSWORD when set, else the embedded
stack's generated credentials of the role under OMS_HOME/credentials, else none.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as Nats

from bus import auth
from bus.connect import connect
from bus.errors import Unavailable
from bus.settings import Settings
from bus.subjects import Route

CONNECT_BOUND_S = 3.0

CLI, ADMIN = "cli", "admin"
_CLIENT_SUBJECTS = frozenset(route.subject for route in auth.CLI_ROUTES)


def role_for(route: Route) -> auth.Role:
    """`cli` for what a client may ask (see `bus.auth.CLI_ROUTES`), `admin` for the rest."""
    return CLI if route.subject in _CLIENT_SUBJECTS else ADMIN


def is_permission_refusal(exc: Exception) -> bool:
    return "permissions violation" in str(exc).lower()


async def connect_briefly(settings: Settings, name: str, *, role: str = CLI, refusals: list[str] | None = None) -> Nats:
    """`bus.connect.connect(persistent=False)` as `role` (`cli`, `admin`, or a service for a rebuild), with a
    deadline: nats-py keeps retrying a refused
    server when it may not reconnect, so an unbounded call could hang on a dead port. The server's
    permissions violations (it drops the message; the request then times out) go to `refusals`."""

    def on_error(exc: Exception) -> None:
        if refusals is not None and is_permission_refusal(exc):
            refusals.append(str(exc).removeprefix("nats: "))

    try:
        return await asyncio.wait_for(
            connect(auth.login(settings, role), name, persistent=False, on_error=on_error), CONNECT_BOUND_S
        )
    except TimeoutError:
        url = settings.resolved_nats_url()
        raise Unavailable(
            f"cannot reach NATS at {url} (no answer within {CONNECT_BOUND_S:g}s): "
            "start it with `oms up` or set OMS_NATS_URL",
            {"url": url},
        ) from None
