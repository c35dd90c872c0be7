"""`oms events tail`: follow OMS_EVENTS live; and how events read: one line each, or an order's timeline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.text import Text

from bus import contract as c
from bus.ids import parse_iso
from bus.settings import SERVICES, Settings
from bus.stream import Reader
from bus.subjects import EVENTS_ROOT
from cli import completion, views
from cli.connection import ADMIN, connect_briefly
from cli.failures import reported
from cli.options import JsonFlag
from cli.output import Output
from cli.session import settings_of
from cli.tables import Col, FitTable

app = typer.Typer(help="Follow the event stream (OMS_EVENTS).", no_args_is_help=True)

TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # one subject token: no dots, wildcards or spaces
POLL_S = 0.25  # how often the follower looks up from the stream to notice Ctrl-C or a lost connection


# -- how events read ----------------------------------------------------------


def _step_summary(step: dict[str, Any]) -> str:
    attempts = step.get("attempts")
    more = f" ({attempts} attempts)" if isinstance(attempts, int) and attempts > 1 else ""
    return f"{step.get('step')} {views.millis(step.get('duration_ms'))}{more}"


def event_detail(event: dict[str, Any], width: int = 100) -> str:
    """The gist of an event's data in a few words: customer, items, total, reason, error, retry, breaker, steps."""
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    parts: list[str] = []
    if event.get("type") == "order_created" and data.get("customer_id"):
        parts.append(f"customer {data['customer_id']}")
    if isinstance(data.get("items"), list) and event.get("type") in ("order_created", "stock_reserved"):
        parts.append(", ".join(f"{i.get('sku')}:{i.get('qty')}" for i in data["items"] if isinstance(i, dict)))
    if data.get("lines"):  # a rejected reservation: what was short
        parts.append(
            "short " + ", ".join(f"{i.get('sku')} {i.get('requested')}>{i.get('available')}" for i in data["lines"])
        )
    if "sku" in data and "qty" in data:  # a restock
        parts.append(f"+{data['qty']}, on hand {data.get('on_hand', '?')}")
    cents = data.get("total_cents", data.get("amount_cents"))
    if isinstance(cents, int):
        parts.append(f"total {views.money(cents, data.get('currency'))}")
    method = data.get("payment_method") or data.get("method")
    if method and method not in ("card", data.get("decline_reason")):
        parts.append(str(method))
    for key in ("reason", "decline_reason"):
        if data.get(key):
            parts.append(f"{key.replace('_', ' ')} {data[key]}")
    if data.get("error"):
        parts.append(f"{data['error']}: {data.get('message', '')}".rstrip(": "))
    if data.get("retry_in_ms") is not None:
        parts.append(f"retry in {data['retry_in_ms']} ms")
    if data.get("target") and data.get("to"):
        parts.append(f"{data['target']} {data.get('from')}→{data['to']}")
    if isinstance(data.get("steps"), list):
        parts.append(", ".join(_step_summary(s) for s in data["steps"] if isinstance(s, dict)))
    elif data.get("duration_ms") is not None:
        parts.append(views.millis(data["duration_ms"]))
    if data.get("tombstone"):
        parts.append("tombstone")
    if data.get("stuck"):
        parts.append("stuck")
    text = "; ".join(p for p in parts if p)
    return text if len(text) <= width else text[: width - 1] + "…"


def step_of(event: dict[str, Any]) -> tuple[str, str]:
    """The saga step and attempt an event records, when it records one."""
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    attempt = data.get("attempt", data.get("attempts"))
    return str(data.get("step") or ""), "" if attempt is None else str(attempt)


def _stamp(event: dict[str, Any]) -> float | None:
    try:
        return parse_iso(str(event.get("occurred_at")))
    except ValueError:
        return None


def timeline(t: c.EventList) -> RenderableType:
    """An order's events by the time they happened (the stream holds them in publish order), each with its
    offset from the first."""
    events = sorted(t.events, key=lambda e: (str(e.get("occurred_at") or ""), e.get("seq") or 0))
    first = next((ts for ts in map(_stamp, events) if ts is not None), None)
    table = FitTable(
        [
            Col("Time (UTC)"),
            Col("+ms", justify="right", drop=3),
            Col("Service", drop=2),
            Col("Type"),
            Col("Step", drop=4),
            Col("Attempt", justify="right", drop=5),
            Col("Detail", fold=True, drop=1, min_fold=20),
        ],
        title=f"Events of {t.order_id}",
    )
    for event in events:
        stamp = str(event.get("occurred_at") or "")
        ts = _stamp(event)
        offset = f"+{(ts - first) * 1000:.0f}" if ts is not None and first is not None else "—"
        step, attempt = step_of(event)
        table.add_row(
            stamp[11:23] or "—",
            offset,
            str(event.get("service", "")),
            Text(str(event.get("type", "")), style=EVENT_STYLE.get(str(event.get("type")), "")),
            step,
            attempt,
            event_detail(event),
        )
    table.caption = f"{len(events)} event(s); `--json` has every field"
    return table


EVENT_STYLE = {
    "order_confirmed": "green",
    "order_failed": "red",
    "order_cancelled": "dim",
    "step_failed": "red",
    "step_retried": "yellow",
    "compensation_retried": "yellow",
    "order_compensating": "magenta",
    "payment_declined": "red",
    "reservation_rejected": "red",
    "breaker_changed": "yellow",
}


def event_line(event: dict[str, Any]) -> Text:
    """One event on one line, for `oms events tail`."""
    stamp = str(event.get("occurred_at") or "")
    kind = str(event.get("type", ""))
    step, attempt = step_of(event)
    line = Text.assemble(
        (stamp[11:23] or "—", "dim"),
        " ",
        (f"{event.get('service', ''):<9}", "bold"),
        " ",
        (f"{kind:<20}", EVENT_STYLE.get(kind, "")),
        " ",
        (str(event.get("order_id") or event.get("subject", "").rsplit(".", 1)[-1]), "cyan"),
    )
    if step:
        line.append(f"  {step}" + (f" #{attempt}" if attempt else ""))
    detail = event_detail(event)
    if detail:
        line.append(f"  {detail}")
    return line


# -- following the stream ---------------------------------------------------------


def filter_subject(order: str | None, service: str | None, kind: str | None) -> str:
    """`events.<service|*>.<type|*>.<order|*>`; each given value must be one subject token."""
    for value, flag in ((order, "--order"), (kind, "--type")):
        if value is not None and not TOKEN.match(value):
            raise typer.BadParameter(f"{value!r} is not an id: letters, digits, _ and - only", param_hint=f"'{flag}'")
    return ".".join((EVENTS_ROOT, service or "*", kind or "*", order or "*"))


def as_record(subject: str, seq: int | None, data: bytes) -> dict[str, Any]:
    """A stream message as the event body plus its stream sequence and subject (as `orders.events` gives)."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"raw": data.decode(errors="replace")}
    return body | {"seq": seq, "subject": subject}


async def follow(
    settings: Settings,
    subject: str,
    on_event: Callable[[dict[str, Any]], None],
    *,
    from_start: bool = False,
    limit: int | None = None,
    on_ready: Callable[[], None] = lambda: None,
) -> int:
    """Feed each event on `subject` to `on_event` in stream order until Ctrl-C/SIGTERM or `limit` events.
    Returns how many were seen."""
    nc = await connect_briefly(settings, "oms-events", role=ADMIN)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    seen = 0
    try:
        reader = await Reader(nc, settings.stream_name).open(subject, from_start=from_start)
        on_ready()
        try:
            while not stop.is_set() and (limit is None or seen < limit):
                for msg in await reader.next_batch(POLL_S, batch=256 if limit is None else min(256, limit - seen)):
                    on_event(as_record(msg.subject, msg.seq, msg.data))
                    seen += 1
        finally:
            await reader.close()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await nc.close()
    return seen


@app.command()
def tail(
    ctx: typer.Context,
    order: Annotated[
        str | None,
        typer.Option(
            "--order", metavar="ORDER_ID", help="Only this order's events.", autocompletion=completion.order_ids
        ),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            "-s",
            metavar="SERVICE",
            help=f"Only events of this service ({', '.join(SERVICES)}).",
            autocompletion=completion.services,
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option("--type", "-t", help="Only this event type, e.g. order_failed.")] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Begin with the oldest event in the stream, not the next new one.")
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, hidden=True, help="Stop after N events.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Follow events as they are published, until Ctrl-C.

    One line per event (one JSON object per line with --json); filters narrow the subject
    `events.<service>.<type>.<order>` the consumer listens to.
    """
    settings = settings_of(ctx)
    if service is not None and service not in SERVICES:
        raise typer.BadParameter(f"{service!r} is not one of {', '.join(SERVICES)}", param_hint="'--service'")
    subject = filter_subject(order, service, kind)
    out = Output(as_json)
    notes = Console(stderr=True, highlight=False)

    def ready() -> None:
        start = "from the start of the stream" if from_start else "new events"
        notes.print(f"[dim]following {escape(subject)} on {settings.stream_name}, {start}; Ctrl-C stops[/]")

    def show(event: dict[str, Any]) -> None:
        if as_json:
            out.json(event, line=True)
        else:
            out.console.print(event_line(event), soft_wrap=True)

    with reported(settings, as_json=as_json):
        seen = asyncio.run(follow(settings, subject, show, from_start=from_start, limit=limit, on_ready=ready))
    notes.print(f"[dim]{seen} event(s)[/]")
