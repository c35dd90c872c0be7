"""Every `list` command's course: the window from the flags, one page or `--all` of them, then the output.

Lists are newest first and page with the contract's `before` cursor: a page's last key is the next page's
`before`. With `--all` the pages are asked for until one comes back short; `--output jsonl` prints each
page's items as they arrive, so a script can stream a large list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from rich.console import RenderableType

from bus.subjects import Route
from cli.connection import role_for
from cli.failures import reported
from cli.options import parse_time
from cli.output import Format, Output
from cli.session import client, command, parse

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
