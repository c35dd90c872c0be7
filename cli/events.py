"""`oms events tail`: follow OMS_EVENTS live; and how events read: one line each, or an order's timeline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import Callable
from typing import Annotated, Any

import nats.errors
import typer
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.text import Text

from bus import contract as c
from bus.errors import Unavailable
from bus.ids import parse_iso
from bus.settings import SERVICES, Settings
from bus.stream import jetstream
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


class Reader:
    """An ephemeral pull consumer on the event stream (no acks): what a client account may read of it.

    Push consumers deliver into the stream's own account, so operators outside it pull: each fetch is
    a request whose answers are the messages. The reader keeps the stream sequence it has read to; when
    its consumer is lost (its node died, or the server dropped it), it makes a new one from the next
    sequence, so nothing is skipped or read twice. Removed on `close` (the server would also drop it
    once idle for INACTIVE_S)."""

    INACTIVE_S = 30.0
    CHECK_AFTER_S = 2.0  # idle this long: ask whether the consumer is still there

    def __init__(self, js: JetStreamContext, stream: str) -> None:
        self.js = js
        self.stream = stream
        self.subject = ""
        self.next_seq = 0  # the stream sequence to read from; 0 until known
        self._sub: JetStreamContext.PullSubscription | None = None
        self._idle_since: float | None = None

    async def open(self, subject: str, *, from_start: bool) -> Reader:
        self.subject = subject
        if not from_start:  # new events: from the stream's end now, so a reopen knows where that was
            self.next_seq = (await self._stream_info()).state.last_seq + 1
        await self._subscribe()
        return self

    async def _stream_info(self) -> js_api.StreamInfo:
        try:
            return await self.js.stream_info(self.stream)
        except NotFoundError:
            raise Unavailable(
                f"stream {self.stream} not found: the services create it when they start (`oms up`)"
            ) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"cannot read {self.stream}: {exc!r}") from None

    async def _subscribe(self) -> None:
        if self.next_seq:
            start = {"deliver_policy": js_api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self.next_seq}
        else:
            start = {"deliver_policy": js_api.DeliverPolicy.ALL}
        config = js_api.ConsumerConfig(ack_policy=js_api.AckPolicy.NONE, inactive_threshold=self.INACTIVE_S, **start)
        try:
            self._sub = await self.js.pull_subscribe(self.subject, durable=None, stream=self.stream, config=config)
        except NotFoundError:
            await self._stream_info()  # says so when the stream itself is missing
            raise
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"cannot read {self.stream}: {exc!r}") from None

    async def next_batch(self, timeout_s: float, batch: int = 256) -> list[Msg]:
        """The next events in stream order; empty when none came within `timeout_s`."""
        assert self._sub is not None, "open the reader first"
        try:
            found = await self._sub.fetch(batch, timeout=timeout_s)
        except nats.errors.TimeoutError:
            found = []
        except nats.errors.ConnectionClosedError:
            raise Unavailable("lost the connection to NATS while reading events") from None
        except (nats.errors.Error, NotFoundError):  # the consumer or its server is gone
            await self._reopen()
            return []
        if found:
            self._idle_since = None
            last = found[-1].metadata.sequence.stream if found[-1].metadata else 0
            self.next_seq = max(self.next_seq, last + 1)
            return found
        now = time.monotonic()
        self._idle_since = self._idle_since or now
        if now - self._idle_since >= self.CHECK_AFTER_S:
            self._idle_since = now
            try:
                await self._sub.consumer_info()
            except (nats.errors.Error, NotFoundError, TimeoutError):
                await self._reopen()
        return []

    async def _reopen(self) -> None:
        """A new consumer from the next sequence (the old one, if it lives, is dropped once idle)."""
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        try:
            await self._subscribe()
        except (Unavailable, NotFoundError):
            self._sub = old  # not yet: the next batch tries again

    async def close(self) -> None:
        if self._sub is None:
            return
        sub, self._sub = self._sub, None
        with contextlib.suppress(Exception):
            name = (await sub.consumer_info()).name
            await sub.unsubscribe()
            await self.js.delete_consumer(self.stream, name)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


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
        reader = await Reader(await jetstream(nc, settings.stream_name), settings.stream_name).open(
            subject, from_start=from_start
        )
        on_ready()
        try:
            while not stop.is_set() and (limit is None or seen < limit):
                for msg in await reader.next_batch(POLL_S, batch=256 if limit is None else min(256, limit - seen)):
                    seq = msg.metadata.sequence.stream if msg.metadata else None
                    on_event(as_record(msg.subject, seq, msg.data))
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
