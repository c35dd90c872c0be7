"""Shell completion from a running stack: order ids, saga ids, SKUs and service names.

Each completer asks the stack (as `oms --home/--nats-url` or OMS_* would reach it) with a short deadline
and offers nothing when it does not answer: completion must never hang a shell or print an error.
Install it with `oms --install-completion`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import typer

from bus import subjects as s
from bus.auth import Role
from bus.settings import SERVICES, Settings
from cli.connection import ADMIN, CLI
from cli.session import client

DEADLINE_S = 1.5
SHOWN = 200  # the newest this many ids are offered


def _settings(ctx: typer.Context) -> Settings:
    """The settings the command would use: the root's --home/--nats-url (parsed, its callback not run)."""
    root = ctx.find_root()
    if root.obj is not None and hasattr(root.obj, "settings"):
        return root.obj.settings
    overrides = {k: v for k in ("home", "nats_url") if (v := root.params.get(k)) is not None}
    return Settings(**overrides)


def _ask(ctx: typer.Context, role: Role, fetch: Callable[[Any], Awaitable[list[str]]]) -> list[str]:
    async def run() -> list[str]:
        async with client(_settings(ctx), role=role) as cl:
            return await fetch(cl)

    with contextlib.suppress(Exception):
        return asyncio.run(asyncio.wait_for(run(), DEADLINE_S))
    return []


def _starting(values: list[str], incomplete: str) -> list[str]:
    return [v for v in values if v.startswith(incomplete)]


def order_ids(ctx: typer.Context, incomplete: str) -> list[str]:
    async def fetch(cl: Any) -> list[str]:
        found = await cl.call(s.ORDERS_LIST, {"limit": SHOWN}, timeout_s=DEADLINE_S)
        return [o["order_id"] for o in found["orders"]]

    return _starting(_ask(ctx, CLI, fetch), incomplete)


def saga_ids(ctx: typer.Context, incomplete: str) -> list[str]:
    """Saga ids (admin: the saga list is an operator's), or order ids when that is what is being typed."""
    if incomplete.startswith("ord"):
        return order_ids(ctx, incomplete)

    async def fetch(cl: Any) -> list[str]:
        found = await cl.call(s.SAGA_LIST, {"limit": SHOWN}, timeout_s=DEADLINE_S)
        return [saga["saga_id"] for saga in found["sagas"]]

    return _starting(_ask(ctx, ADMIN, fetch), incomplete)


def skus(ctx: typer.Context, incomplete: str) -> list[str]:
    async def fetch(cl: Any) -> list[str]:
        found = await cl.call(s.INVENTORY_STOCK, {}, timeout_s=DEADLINE_S)
        return [p["sku"] for p in found["products"]]

    return _starting(_ask(ctx, CLI, fetch), incomplete.upper())


def services(ctx: typer.Context, incomplete: str) -> list[str]:
    return _starting(list(SERVICES), incomplete)


def items(ctx: typer.Context, incomplete: str) -> list[str]:
    """`--item SKU:QTY`: the SKUs, each with `:` to type the quantity after."""
    if ":" in incomplete:
        return []
    return [f"{sku}:" for sku in skus(ctx, incomplete)]
