"""One command's conversation with OMS: check the request, connect, call, close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import RenderableType

from bus import auth, validation
from bus.auth import Role
from bus.client import Client
from bus.errors import InternalError, RequestTimeout, Unavailable
from bus.settings import Settings
from bus.subjects import Route
from cli.connection import CLI, connect_briefly, role_for
from cli.failures import reported
from cli.output import Output
from cli.stack import StackSettings

M = TypeVar("M", bound=BaseModel)

QUERY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Config:
    """Everything read from OMS_* and the global flags, once, by the root command (see `cli.app`)."""

    settings: Settings
    stack: StackSettings


def config_of(ctx: typer.Context) -> Config:
    return ctx.find_root().obj


def settings_of(ctx: typer.Context) -> Settings:
    return config_of(ctx).settings


def command(model: type[M], flags: Mapping[str, str], **fields: Any) -> M:
    """The request, checked against the contract before it is sent; a problem is a usage error that
    names the flag (`flags` maps contract field -> flag) in our words (`bus.validation`). The service still
    validates with its limits."""
    try:
        return model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problem = validation.problems(exc)[0]
        top = problem["field"].split(".", 1)[0].split("[", 1)[0]
        hint = flags.get(top, top)
        # The flag names a top-level field already; a nested one keeps its path (items[0].qty).
        message = problem["message"] if problem["field"] == top else validation.sentence(problem)
        raise typer.BadParameter(message, param_hint=f"'{hint}'") from None


@asynccontextmanager
async def client(settings: Settings, *, role: Role = CLI) -> AsyncIterator[Client]:
    """A client on a short-lived connection as `role` (`cli`, or `admin` for operator commands): it rides
    out a node loss (reconnects, and retries what is safe to send again for `client_patience_s`), and
    fails fast when the server refuses it. A request the server refused to pass on fails as UNAVAILABLE saying so,
    rather than as a bare timeout."""
    refusals: list[str] = []
    nc = await connect_briefly(settings, f"oms-{role}", role=role, refusals=refusals)
    try:
        yield Client(
            nc, timeout_s=QUERY_TIMEOUT_S, patience_s=settings.client_patience_s, hopeless=lambda: bool(refusals)
        )
    except RequestTimeout:
        if not refusals:
            raise
        user = auth.login(settings, role).nats_user or "(none)"
        raise Unavailable(
            f"NATS refused user {user!r}: {refusals[0]}; operator commands need the admin user "
            "(OMS_NATS_USER=admin and its password)",
            {"user": user, "refusals": refusals[:5]},
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def request(
    settings: Settings,
    route: Route,
    payload: BaseModel | dict[str, Any],
    *,
    timeout_s: float | None = None,
    key: str | None = None,
    role: Role | None = None,
) -> dict[str, Any]:
    """The `result` of one call, as `role` (by default the one the route needs: `cli.connection.role_for`).
    A timeout carries the idempotency key, so the message can say how to learn the outcome without doing
    it twice."""
    async with client(settings, role=role or role_for(route)) as cl:
        try:
            return await cl.call(route, payload, timeout_s=timeout_s, idempotency_key=key)
        except RequestTimeout as exc:
            if key:
                exc.details["idempotency_key"] = key
            raise


def call(
    settings: Settings,
    route: Route,
    payload: BaseModel | dict[str, Any],
    *,
    timeout_s: float | None = None,
    key: str | None = None,
    role: Role | None = None,
) -> dict[str, Any]:
    """`request` for a sync command."""
    return asyncio.run(request(settings, route, payload, timeout_s=timeout_s, key=key, role=role))


def read_and_show(
    settings: Settings,
    route: Route,
    payload: BaseModel | dict[str, Any],
    model: type[M],
    render: Callable[[M], RenderableType],
    out: Output,
) -> None:
    """A read command's whole course: the call, its result as `model`, then the table (or the JSON);
    a failure exits as `reported` says."""
    with reported(settings, as_json=out.as_json):
        raw = call(settings, route, payload)
        found = parse(model, raw, route)
    out.result(raw, render(found))


def parse(model: type[M], raw: dict[str, Any], route: Route) -> M:
    """A result as its contract model (for the views); a misfit is the service's fault: INTERNAL."""
    try:
        return model.model_validate(raw)
    except ValidationError:
        raise InternalError(f"{route.subject} answered a result that does not fit {model.__name__}") from None
