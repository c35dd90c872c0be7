"""Every `list` command's course: the window from the flags, one page or `--all` of them, then the output.

Lists are newest first and page with the contract's `before` cursor: a page's last key is the next page's
`before`. With `--all` the pages are asked for until one comes back short; `--output jsonl` prints each
page's items as they arrive, so a script can stream a large list.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import RenderableType

from bus.subjects import Route
from cli.connection import role_for
from cli.failures import reported
from cli.options import (
    AfterOption,
    AllFlag,
    BeforeOption,
    JsonFlag,
    LimitOption,
    OutputOption,
    SinceOption,
    UntilOption,
    parse_time,
)
from cli.output import Format, Output
from cli.session import client, command, parse, settings_of

M = TypeVar("M", bound=BaseModel)

WINDOW_FLAGS = {"limit": "--limit", "before": "--before", "after": "--after", "since": "--since", "until": "--until"}
ALL_PAGE = 500  # the page size of --all when --limit does not say


@dataclass(frozen=True)
class Window:
    """The paging and time flags every list takes."""

    limit: int | None = None
    before: str | None = None
    after: str | None = None
    since: str | None = None
    until: str | None = None
    every: bool = False

    def fields(self) -> dict[str, Any]:
        return {
            "limit": self.limit or (ALL_PAGE if self.every else None),
            "before": self.before,
            "after": self.after,
            "since": parse_time(self.since, "--since") if self.since else None,
            "until": parse_time(self.until, "--until") if self.until else None,
        }


@dataclass(frozen=True)
class Listing:
    """What one list command asks and shows: its route, its model, the key of its items and their id."""

    route: Route
    query: type[BaseModel]
    result: type[BaseModel]
    items: str  # the result's list: "orders", "sagas", ...
    key: str  # each item's id, the cursor: "order_id", "saga_id"
    noun: str  # for the caption: "order", "saga", ...


def run(
    settings: Any,
    listing: Listing,
    window: Window,
    flags: Mapping[str, str],
    render: Callable[[Any, str | None], RenderableType],
    out: Output,
    **filters: Any,
) -> None:
    """Check the query, ask for one page (or every page with `window.every`), print it as `out` says.
    `render(result, cursor)` draws the table; `cursor` is the `--before` of the next page, if there is one."""
    cmd = command(listing.query, {**WINDOW_FLAGS, **flags}, **window.fields(), **filters)
    collected: list[Any] = []
    more: list[str | None] = [None]

    async def pages() -> None:
        async with client(settings, role=role_for(listing.route)) as cl:
            page = cmd
            while True:
                raw = await cl.call(listing.route, page)
                parse(listing.result, raw, listing.route)
                batch = raw[listing.items]
                if out.format is Format.JSONL:
                    out.lines(batch)
                else:
                    collected.extend(batch)
                full = len(batch) >= page.limit and bool(batch)
                if not full:
                    return
                if not window.every:
                    more[0] = batch[-1][listing.key]
                    return
                page = page.model_copy(update={"before": batch[-1][listing.key]})

    with reported(settings, as_json=out.as_json):
        asyncio.run(pages())
    if out.format is Format.JSONL:
        return
    raw_all = {listing.items: collected}
    out.result(raw_all, render(parse(listing.result, raw_all, listing.route), more[0]))


# The options every list takes after its own filters, in this order: the window's, then the output's.
_COMMON = (
    ("limit", LimitOption, None),
    ("before", BeforeOption, None),
    ("after", AfterOption, None),
    ("since", SinceOption, None),
    ("until", UntilOption, None),
    ("every", AllFlag, False),
    ("output", OutputOption, None),
    ("as_json", JsonFlag, False),
)
_WINDOW = ("limit", "before", "after", "since", "until", "every")


def lists(
    listing: Listing,
    flags: Mapping[str, str],
    render: Callable[[Any, str | None], RenderableType],
    *,
    page: int | None = None,
) -> Callable[[Callable[..., Mapping[str, Any]]], Callable[..., None]]:
    """A `list` command made of a function of its own filters. The function takes the context and its filter
    options and returns the query's filter fields; the window's options (--limit, --before, --after, --since,
    --until, --all) and the output's (--output, --json) join its signature, as every list takes them, and the
    command runs as `run` says. `flags` names each filter field's option (for errors); `page` is the limit of
    one page when --limit does not say (None: the contract's default)."""

    def make(filters_of: Callable[..., Mapping[str, Any]]) -> Callable[..., None]:
        own = inspect.signature(filters_of, eval_str=True)
        common = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in _COMMON]
        params = [*own.parameters.values(), *common]

        @functools.wraps(filters_of)
        def list_command(ctx: typer.Context, **given: Any) -> None:
            window = Window(**{name: given.pop(name) for name in _WINDOW})
            if window.limit is None and not window.every and page is not None:
                window = replace(window, limit=page)
            out = Output.of(given.pop("output"), given.pop("as_json"))
            run(settings_of(ctx), listing, window, flags, render, out, **filters_of(ctx, **given))

        list_command.__signature__ = own.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
        list_command.__annotations__ = {p.name: p.annotation for p in params}
        return list_command

    return make
