"""Rich views of contract results and of the local stack: tables, money as $89.00, coloured status."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bus import contract as c
from bus.ids import parse_iso
from cli.nodes import NodeStatus
from cli.stack import Stack, StackStatus, Stopped
from cli.tables import Col, FitTable

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
STATUS_STYLE = {
    "CONFIRMED": "bold green",
    "PENDING": "yellow",
    "COMPENSATING": "magenta",
    "FAILED": "bold red",
    "CANCELLED": "dim",
    "AUTHORIZED": "bold green",
    "DECLINED": "bold red",
    "REFUNDED": "cyan",
    "VOIDED": "dim",
    "SHIPPING": "yellow",
    "SHIPPED": "bold blue",
    "PARTIALLY_RETURNED": "cyan",
    "RETURNED": "cyan",
    "RETURNING": "yellow",
    "CAPTURED": "bold blue",
    "PARTIALLY_REFUNDED": "cyan",
    "COMMITTED": "blue",
    "ACTIVE": "green",
    "RELEASED": "dim",
    "RUNNING": "yellow",
    "COMPLETED": "bold green",
    "SUCCEEDED": "green",
    "RETRYING": "yellow",
    "ABANDONED": "dim",
}


def money(cents: int | None, currency: str | None = "USD") -> str:
    """Integer cents as text: 8900 -> $89.00; unknown currencies as `89.00 CHF`."""
    if cents is None:
        return "—"
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    amount = f"{whole:,}.{frac:02d}"
    code = currency or "USD"
    symbol = SYMBOLS.get(code)
    return f"{sign}{symbol}{amount}" if symbol else f"{sign}{amount} {code}"


def status(value: str) -> Text:
    return Text(str(value), style=STATUS_STYLE.get(str(value), ""))


def when(iso: str | None) -> str:
    """2026-11-26T11:52:04.314Z -> 2026-11-26 11:52:04 (UTC)."""
    return iso[:19].replace("T", " ") if iso else "—"


def at(iso: str | None) -> tuple[str, str]:
    """A time as (date and time, time of day): the short form for a narrow table."""
    return (when(iso), iso[11:19] if iso else "—")


def clock(iso: str | None) -> str:
    """The time of day to the millisecond: 11:52:04.314."""
    return iso[11:23] if iso else "—"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# -- orders -----------------------------------------------------------------


def order(o: c.Order, *, with_saga: bool = False) -> RenderableType:
    head = Text.assemble(
        ("Order ", "bold"), (o.order_id, "bold cyan"), "  ", status(o.status), f"  customer {o.customer_id}"
    )
    lines = Table(box=None, pad_edge=False, show_edge=False)
    lines.add_column("SKU")
    lines.add_column("Qty", justify="right")
    lines.add_column("Unit", justify="right")
    lines.add_column("Line", justify="right")
    for line in o.items:
        unit = line.unit_price_cents
        lines.add_row(
            line.sku,
            str(line.qty),
            money(unit, o.currency),
            money(None if unit is None else unit * line.qty, o.currency),
        )
    parts: list[RenderableType] = [head, lines]
    facts = [f"total [bold]{money(o.total_cents, o.currency)}[/]", f"payment {o.payment_method}"]
    if o.failure_reason:
        detail = failure_detail(o.saga) if o.saga else None
        facts.append(f"failure [bold red]{o.failure_reason}[/]" + (f": {escape(detail)}" if detail else ""))
    if o.cancel_reason:
        facts.append(f"cancelled: {escape(o.cancel_reason)}")
    facts.append(f"created {when(o.created_at)}")
    if o.shipped_at:
        facts.append(f"shipped {when(o.shipped_at)}")
    if o.ship_failure and o.status == c.OrderStatus.CONFIRMED:
        facts.append(f"last shipment turned back: [bold red]{escape(o.ship_failure)}[/]")
    if o.refunded_cents:
        facts.append(f"refunded [bold]{money(o.refunded_cents, o.currency)}[/]")
    parts.append(Text.from_markup("  ".join(facts)))
    if o.returns:
        parts.append(returns(o))
    if with_saga:  # its placement's saga, then its last shipment's and each return's
        parts += [saga(s) for s in (o.saga, o.ship_saga, *(r.saga for r in o.returns)) if s is not None]
    return Group(*parts)


def returns(o: c.Order) -> RenderableType:
    """An order's returns: each one's id (its saga's), status, units and value."""
    table = FitTable(
        [Col("Return"), Col("Status"), Col("Items", fold=True), Col("Value", justify="right"), Col("Why", drop=1)],
        title=Text("returns", style="bold"),
    )
    for r in o.returns:
        items = ", ".join(f"{line.sku}:{line.qty}" for line in r.items)
        why = r.failure_reason or r.reason or ""
        table.add_row(r.return_id, status(r.status), items, money(r.amount_cents, o.currency), why)
    return table


def failure_detail(s: c.SagaView) -> str | None:
    """Why a saga failed, in the words of the step that failed (`not enough LAMP-1: requested 5, available 3`)."""
    for step in reversed(s.steps):
        if step.action == "invoke" and step.status == "FAILED" and step.last_error:
            return str(step.last_error.get("message") or "") or None
    if s.last_error:
        return str(s.last_error.get("message") or "") or None
    return None


def saga(s: c.SagaView) -> RenderableType:
    """A saga step by step, like `dbos workflow steps`: each step and compensation in the order it ran,
    its status, attempts, start (from the saga's), duration, and its times; each step's last error and
    uncertainty below the table, in full; then where the saga stands."""
    title = Text.assemble(("saga ", "bold"), (s.saga_id, "bold cyan"), f" ({s.name}) ", status(s.status))
    table = FitTable(
        [
            Col("#", justify="right"),
            Col("Step"),
            Col("Action"),
            Col("Status"),
            Col("Attempts", justify="right"),
            Col("Start", justify="right", drop=2),
            Col("Duration", justify="right", drop=1),
            Col("Uncertain", drop=3),
            Col("Started (UTC)", drop=4),
            Col("Finished", drop=5),
        ],
        title=title,
    )
    origin = _seconds(s.created_at)
    notes: list[Text] = []
    for number, step in enumerate(s.steps, 1):
        began = _seconds(step.started_at)
        table.add_row(
            str(number),
            step.step,
            (step.action, "undo" if step.action == "compensate" else "do"),
            status(step.status),
            str(step.attempts),
            f"+{millis((began - origin) * 1000)}" if began is not None and origin is not None else "—",
            millis(step.duration_ms if step.duration_ms is not None else _elapsed_ms(step)),
            Text("yes", style="yellow") if step.uncertain else "",
            clock(step.started_at),
            clock(step.finished_at),
        )
        if step.uncertain or step.last_error:
            note = Text(f"#{number} {step.step} {step.action}: ", style="bold")
            if step.uncertain:
                note.append("uncertain (it may have taken effect; it is compensated either way)", style="yellow")
                if step.last_error:
                    note.append("; ")
            if step.last_error:
                note.append(f"last error {_error(step.last_error)}", style="red" if step.status == "FAILED" else "")
            notes.append(note)
    facts = []
    if s.failure_reason:
        facts.append(f"failure [bold red]{escape(s.failure_reason)}[/]")
    if s.status in ("RUNNING", "COMPENSATING"):
        if s.step:
            facts.append(f"at {s.step}" + (" [magenta](compensating)[/]" if s.compensating else ""))
        facts.append(f"next retry {when(s.next_retry_at) if s.next_retry_at else 'none scheduled'}")
        facts.append(f"deadline {when(s.deadline_at)}")
    else:
        facts.append(f"ended {when(s.updated_at)}")
    if s.stuck:
        facts.append("[bold red]stuck[/]: `oms saga retry` or `oms saga abort` it")
    if s.last_error:
        facts.append(f"last error {escape(_error(s.last_error))}")
    return Group(table, *notes, Text.from_markup("  ".join(facts)))


def _seconds(iso: str | None) -> float | None:
    return parse_iso(iso) if iso else None


def _elapsed_ms(step: c.StepRecord) -> float | None:
    """A step's duration from its start and end, when it recorded none of its own (a failed attempt)."""
    if not (step.started_at and step.finished_at):
        return None
    return max(0.0, (parse_iso(step.finished_at) - parse_iso(step.started_at)) * 1000)


def millis(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _error(error: dict | None) -> str:
    if not error:
        return ""
    return f"{error.get('code', '')} {error.get('message', '')}".strip()


def sagas(items: Iterable[c.SagaView], cursor: str | None = None) -> RenderableType:
    """Saga id and status always whole; then failure, created, step, attempts, next retry, deadline, order."""
    table = FitTable(
        [
            Col("Saga"),
            Col("Status"),
            Col("Failure", drop=1),  # a reason code: whole or not at all
            Col("Step", drop=3),
            Col("Attempts", justify="right", drop=4),
            Col("Created", drop=2),
            Col("Next retry", drop=6),
            Col("Deadline", drop=7),
            Col("Order", drop=8),  # the saga id's twin (saga_X runs ord_X)
        ]
    )
    for s in items:
        state = status(s.status)
        if s.stuck:
            state.append(" stuck", style="bold red")
        active = s.status in ("RUNNING", "COMPENSATING")
        table.add_row(
            s.saga_id,
            state,
            s.failure_reason or "",
            (s.step or "—") if active else "—",
            str(s.attempts) if active else "—",
            at(s.created_at),
            clock(s.next_retry_at)[:8] if s.next_retry_at else "—",  # soon: the time of day says it
            clock(s.deadline_at)[:8] if active else "—",
            s.ref or "—",
        )
    table.caption = caption(table.row_count, "saga", cursor)
    return table


def orders(items: Iterable[c.Order], cursor: str | None = None) -> RenderableType:
    """Order id and status always whole; then created, customer, total, items."""
    table = FitTable(
        [
            Col("Order"),
            Col("Status"),
            Col("Customer", drop=2),
            Col("Total", justify="right", drop=3),
            Col("Created", drop=1),
            Col("Failure", drop=5),
            Col("Items", fold=True, drop=4, min_fold=12),
        ]
    )
    for o in items:
        table.add_row(
            o.order_id,
            status(o.status),
            o.customer_id,
            money(o.total_cents, o.currency),
            at(o.created_at),
            o.failure_reason or "",
            ", ".join(f"{line.sku}:{line.qty}" for line in o.items),
        )
    table.caption = caption(table.row_count, "order", cursor)
    return table


def caption(count: int, noun: str, cursor: str | None) -> str:
    """`3 orders, newest first`, and how to ask for the next page when there is one."""
    text = f"{count} {noun}{'' if count == 1 else 's'}, newest first"
    if cursor:
        text += f"; older: --before {cursor} (or --all)"
    return text


# -- inventory and payment ------------------------------------------------


def stock(products: Iterable[c.Product], title: str | None = None) -> RenderableType:
    table = FitTable(
        [
            Col("SKU"),
            Col("Name", fold=True, drop=1, min_fold=12),
            Col("Price", justify="right", drop=2),
            Col("On hand", justify="right"),
            Col("Reserved", justify="right"),
            Col("Available", justify="right"),
        ],
        title=title,
    )
    for p in products:
        available = Text(str(p.available), style="bold red" if p.available <= 0 else "")
        table.add_row(p.sku, p.name, money(p.price_cents), str(p.on_hand), str(p.reserved), available)
    return table


def payments(items: Iterable[c.Payment], cursor: str | None = None) -> RenderableType:
    """Order id and status always whole; then amount, customer, method, decline reason, created."""
    table = FitTable(
        [
            Col("Order"),
            Col("Status"),
            Col("Amount", justify="right", drop=1),
            Col("Customer", drop=3),
            Col("Method", drop=5),
            Col("Declined", drop=4),
            Col("Created", drop=2),
        ]
    )
    for p in items:
        table.add_row(
            p.order_id,
            status(p.status),
            money(p.amount_cents, p.currency),
            p.customer_id or "—",
            p.method or "—",
            p.decline_reason or "",
            at(p.created_at),
        )
    table.caption = caption(table.row_count, "payment", cursor)
    return table


def reservations(items: Iterable[c.Reservation], cursor: str | None = None) -> RenderableType:
    """Order id and status always whole; then total, created, released, items."""
    table = FitTable(
        [
            Col("Order"),
            Col("Status"),
            Col("Total", justify="right", drop=2),
            Col("Created", drop=1),
            Col("Released", drop=4),
            Col("Items", fold=True, drop=3, min_fold=12),
        ]
    )
    for r in items:
        table.add_row(
            r.order_id,
            status(r.status),
            money(r.total_cents, r.currency),
            at(r.created_at),
            at(r.released_at) if r.released_at else "—",
            ", ".join(f"{line.sku}:{line.qty}" for line in r.items) or "—",
        )
    table.caption = caption(table.row_count, "reservation", cursor)
    return table


def payment(p: c.Payment) -> RenderableType:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("order", p.order_id)
    table.add_row("status", status(p.status))
    table.add_row("amount", money(p.amount_cents, p.currency))
    table.add_row("method", p.method or "—")
    if p.customer_id:
        table.add_row("customer", p.customer_id)
    if p.decline_reason:
        table.add_row("declined", Text(p.decline_reason, style="red"))
    table.add_row("created", when(p.created_at))
    table.add_row("updated", when(p.updated_at))
    return table


# -- the local stack --------------------------------------------------------


def stack_up(s: Stack, home: Path) -> RenderableType:
    """Each process: name, pid and state whole; the URL (a server's) or its subjects; its log."""
    procs = s.nats + s.services
    longest_url = max((len(p.url) for p in procs if p.url), default=10)
    table = FitTable(
        [
            Col("Process"),
            Col("PID", justify="right"),
            Col("State"),
            Col("URL or subjects", fold=True, min_fold=max(longest_url, 16), drop=1),
            Col("Log", drop=2),
        ],
        title=Text.assemble("OMS on ", (s.url, "bold"), f", home {home}"),
    )
    for p in procs:
        state = Text("started", style="green") if p.started else Text("was running", style="dim")
        subjects = p.url or subject_group(p.subjects)
        log = p.log.relative_to(home) if p.log.is_relative_to(home) else p.log
        table.add_row(p.name, str(p.pid), state, subjects, str(log))
    return table


def subject_group(subjects: list[str]) -> str:
    """orders.place, orders.get -> orders.{place, get}"""
    prefixes = {subject.split(".", 1)[0] for subject in subjects}
    if len(prefixes) != 1 or any("." not in subject for subject in subjects):
        return ", ".join(subjects)
    prefix = prefixes.pop()
    return f"{prefix}.{{{', '.join(subject.split('.', 1)[1] for subject in subjects)}}}"


def stack_down(stopped: list[Stopped]) -> RenderableType:
    if not stopped:
        return Text("nothing was running")
    table = Table()
    for column in ("Process", "PID", "Outcome"):
        table.add_column(column)
    style = {"stopped": "green", "killed": "yellow", "not running": "dim"}
    for s in stopped:
        table.add_row(s.name, str(s.pid), Text(s.outcome, style=style.get(s.outcome, "")))
    return table


def stack_status(st: StackStatus) -> RenderableType:
    table = FitTable(
        [
            Col("Service"),
            Col("State"),
            Col("Faults", fold=True, min_fold=12),
            Col("Breakers", fold=True, min_fold=10, drop=2),
            Col("Errors", justify="right", drop=3),
            Col("Requests", justify="right", drop=4),
            Col("Sagas", justify="right", drop=5),
            Col("Backlog", justify="right", drop=6),
            Col("Uptime", justify="right", drop=7),
            Col("PID", justify="right", drop=8),
            Col("Version", drop=9),
            Col("API", drop=10),
            Col("Endpoints", justify="right", drop=11),
        ],
        title="Services",
    )
    busy = FitTable(
        [
            Col("Subject"),
            Col("Requests", justify="right"),
            Col("Errors", justify="right"),
            Col("Last error", fold=True, drop=1, min_fold=16),
        ],
        title="Endpoints that served requests",
    )
    for s in st.services:
        if s.answering:
            state = Text("up", style="bold green")
        elif s.running:
            state = Text("running, not answering", style="yellow")
        else:
            state = Text("down", style="bold red")
        endpoints = [e for e in s.endpoints if not e.subject.startswith("chaos.")]
        for e in endpoints:
            if e.requests and not e.subject.endswith(".health"):  # `oms status` itself asks these
                busy.add_row(
                    e.subject,
                    str(e.requests),
                    Text(str(e.errors), style="red" if e.errors else ""),
                    e.last_error or "",
                )
        backlog, sagas, breakers, in_force = _health_cells(s.health, s.answering)
        table.add_row(
            s.name,
            state,
            in_force,
            breakers,
            Text(str(s.errors), style="red" if s.errors else "") if s.answering else "—",
            str(s.requests) if s.answering else "—",
            sagas,
            backlog,
            duration(s.uptime_s),
            str(s.pid) if s.running else "—",
            s.version or "—",
            s.api or "—",
            str(len(endpoints)) if s.answering else "—",
        )
    if st.nats_reachable:
        nats_line = f"[bold]NATS[/] {st.url} [green]reachable[/]"
    else:
        nats_line = f"[bold]NATS[/] {st.url} [bold red]unreachable[/]: {st.nats_error}"
    if st.nats_pid:
        nats_line += f"  (embedded nats-server, pid {st.nats_pid})"
    parts: list[RenderableType] = [table]
    if busy.row_count:
        parts.append(busy)
    parts.append(Text.from_markup(nats_line))
    if st.nodes:
        parts.append(nodes_table(st.nodes))
    if st.stream is not None:
        parts.append(
            Text.from_markup(
                f"[bold]Stream[/] {st.stream.name}: {st.stream.messages} messages, "
                f"{_bytes(st.stream.bytes)}, {st.stream.consumers} consumers, {st.stream.replicas} replicas"
            )
        )
    elif st.nats_reachable:
        parts.append(Text("Stream: none yet (a service creates it when it starts)", style="dim"))
    return Group(*parts)


def nodes_table(nodes: list[NodeStatus]) -> FitTable:
    """The NATS servers: each node, which one leads the stream and the meta group, each replica's lag."""
    table = FitTable(
        [
            Col("Node"),
            Col("State"),
            Col("Stream"),
            Col("URL", drop=1),
            Col("Lag", justify="right", drop=2),
            Col("Meta", drop=3),
            Col("PID", justify="right", drop=4),
        ],
        title="NATS nodes",
    )
    for n in nodes:
        if n.offline or n.running is False:
            state = Text("down", style="bold red")
        elif n.running or n.stream_role:
            state = Text("up", style="bold green")
        else:
            state = Text("—", style="dim")
        if n.stream_role == "leader":
            role = Text("leader", style="bold")
        elif n.stream_role == "replica":
            role = Text(
                "replica, current" if n.current else "replica, catching up", style="" if n.current else "yellow"
            )
        else:
            role = Text("—", style="dim")
        lag = "—" if n.stream_role is None else str(n.lag or 0)
        table.add_row(
            n.name,
            state,
            role,
            n.url or "—",
            lag,
            Text("leader", style="bold") if n.meta_leader else "",
            str(n.pid) if n.pid else "—",
        )
    return table


BREAKER_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}


def _health_cells(h: dict[str, Any] | None, answering: bool = True) -> list[RenderableType]:
    """Outbox backlog, sagas in flight, breaker states and faults in force, from `<service>.health`."""
    if h is None:
        unknown = Text("unknown: no health answer", style="yellow") if answering else Text("—")
        return ["—", "—", "—", unknown]
    backlog = int(h.get("outbox_backlog") or 0)
    lag = float(h.get("outbox_lag_s") or 0)
    backlog_cell = Text(f"{backlog}" + (f" ({lag:.1f}s)" if backlog else ""), style="yellow" if backlog else "")
    sagas = "—" if h.get("sagas_in_flight") is None else str(h["sagas_in_flight"])
    states = h.get("breakers") or {}
    breakers = Text("—" if not states else "all closed", style="green" if states else "")
    if any(state != "closed" for state in states.values()):
        breakers = Text()
        for target, state in sorted(states.items()):
            breakers.append(f"{' ' if breakers else ''}{target}:")
            breakers.append(str(state), style=BREAKER_STYLE.get(str(state), ""))
    return [backlog_cell, sagas, breakers, faults(h.get("chaos") or {})]


def faults(chaos: dict[str, Any]) -> Text:
    """The fault injection in force, in a few words (`none` when there is none)."""
    if not chaos.get("active"):
        return Text("none", style="dim")
    parts = []
    if chaos.get("error_rate"):
        parts.append(f"errors {chaos['error_rate']:.0%}")
    if chaos.get("latency_ms") or chaos.get("latency_jitter_ms"):
        jitter = f"+≤{chaos['latency_jitter_ms']}" if chaos.get("latency_jitter_ms") else ""
        parts.append(f"latency {chaos.get('latency_ms', 0)}{jitter} ms")
    if chaos.get("drop_reply_rate"):
        parts.append(f"lost replies {chaos['drop_reply_rate']:.0%}")
    if chaos.get("endpoints"):
        parts.append("on " + ",".join(chaos["endpoints"]))
    return Text(", ".join(parts), style="bold yellow")


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
