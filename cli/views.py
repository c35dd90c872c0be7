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
from cli.nodes import NodeStatus
from cli.stack import Stack, StackStatus, Stopped

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
    "ACTIVE": "green",
    "RELEASED": "dim",
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
        facts.append(f"failure [bold red]{o.failure_reason}[/]")
    if o.cancel_reason:
        facts.append(f"cancelled: {o.cancel_reason}")
    facts.append(f"created {when(o.created_at)}")
    parts.append(Text.from_markup("  ".join(facts)))
    if with_saga and o.saga is not None:
        parts.append(saga(o.saga))
    return Group(*parts)


def saga(s: c.SagaView) -> RenderableType:
    """A saga with its steps (step, action, status, attempts, uncertain, duration, last error) and where it stands."""
    table = Table(title=f"saga {s.saga_id} ({s.name}) {s.status}", title_justify="left", expand=False)
    for column, justify in (
        ("Step", "left"),
        ("Action", "left"),
        ("Status", "left"),
        ("Attempts", "right"),
        ("Uncertain", "left"),
        ("Duration", "right"),
        ("Last error", "left"),
    ):
        table.add_column(column, justify=justify)
    for step in s.steps:
        table.add_row(
            step.step,
            step.action,
            status(step.status),
            str(step.attempts),
            Text("yes", style="yellow") if step.uncertain else "",
            millis(step.duration_ms),
            _error(step.last_error),
        )
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
    return Group(table, Text.from_markup("  ".join(facts)))


def millis(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _error(error: dict | None) -> str:
    if not error:
        return ""
    return f"{error.get('code', '')} {error.get('message', '')}".strip()


def sagas(items: Iterable[c.SagaView]) -> RenderableType:
    table = Table()
    for column in ("Saga", "Order", "Status", "Step", "Attempts", "Failure", "Next retry", "Deadline", "Created"):
        table.add_column(column, no_wrap=column != "Failure", justify="right" if column == "Attempts" else "left")
    count = 0
    for s in items:
        count += 1
        state = status(s.status)
        if s.stuck:
            state.append(" stuck", style="bold red")
        active = s.status in ("RUNNING", "COMPENSATING")
        table.add_row(
            s.saga_id,
            s.ref or "—",
            state,
            (s.step or "—") if active else "—",
            str(s.attempts) if active else "—",
            s.failure_reason or "",
            when(s.next_retry_at)[11:] if s.next_retry_at else "—",  # soon: the time of day says it
            when(s.deadline_at)[11:] if active else "—",
            when(s.created_at),
        )
    table.caption = f"{count} saga(s), newest first"
    return table


def orders(items: Iterable[c.Order]) -> RenderableType:
    table = Table()
    table.add_column("Order", no_wrap=True)
    table.add_column("Status")
    table.add_column("Customer")
    table.add_column("Items")
    table.add_column("Total", justify="right")
    table.add_column("Created")
    count = 0
    for o in items:
        count += 1
        table.add_row(
            o.order_id,
            status(o.status),
            o.customer_id,
            ", ".join(f"{line.sku}:{line.qty}" for line in o.items),
            money(o.total_cents, o.currency),
            when(o.created_at),
        )
    table.caption = f"{count} order(s), newest first"
    return table


# -- inventory and payment ------------------------------------------------


def stock(products: Iterable[c.Product], title: str | None = None) -> RenderableType:
    table = Table(title=title, title_justify="left")
    for column, justify in (
        ("SKU", "left"),
        ("Name", "left"),
        ("Price", "right"),
        ("On hand", "right"),
        ("Reserved", "right"),
        ("Available", "right"),
    ):
        table.add_column(column, justify=justify)
    for p in products:
        available = Text(str(p.available), style="bold red" if p.available <= 0 else "")
        table.add_row(p.sku, p.name, money(p.price_cents), str(p.on_hand), str(p.reserved), available)
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
    table = Table(title=f"OMS on {s.url}, home {home}", title_justify="left")
    table.add_column("Service", no_wrap=True)
    table.add_column("PID", justify="right")
    table.add_column("State")
    table.add_column("Subjects")
    table.add_column("Log", no_wrap=True)
    procs = s.nats + s.services
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
    table = Table(title="Services", title_justify="left")
    for column, justify in (
        ("Service", "left"),
        ("State", "left"),
        ("PID", "right"),
        ("Version", "left"),
        ("Uptime", "right"),
        ("Requests", "right"),
        ("Errors", "right"),
        ("Endpoints", "right"),
        ("Backlog", "right"),
        ("Sagas", "right"),
        ("Breakers", "left"),
        ("Faults", "left"),
    ):
        table.add_column(column, justify=justify)
    busy = Table(title="Endpoints that served requests", title_justify="left")
    for column, justify in (("Subject", "left"), ("Requests", "right"), ("Errors", "right")):
        busy.add_column(column, justify=justify)
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
                busy.add_row(e.subject, str(e.requests), Text(str(e.errors), style="red" if e.errors else ""))
        table.add_row(
            s.name,
            state,
            str(s.pid) if s.running else "—",
            s.version or "—",
            duration(s.uptime_s),
            str(s.requests) if s.answering else "—",
            Text(str(s.errors), style="red" if s.errors else "") if s.answering else "—",
            str(len(endpoints)) if s.answering else "—",
            *_health_cells(s.health),
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


def nodes_table(nodes: list[NodeStatus]) -> Table:
    """The NATS servers: each node, which one leads the stream and the meta group, each replica's lag."""
    table = Table(title="NATS nodes", title_justify="left")
    for column, justify in (
        ("Node", "left"),
        ("State", "left"),
        ("PID", "right"),
        ("URL", "left"),
        ("Stream", "left"),
        ("Lag", "right"),
        ("Meta", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column in ("Node", "State", "URL"))
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
            str(n.pid) if n.pid else "—",
            n.url or "—",
            role,
            lag,
            Text("leader", style="bold") if n.meta_leader else "",
        )
    return table


BREAKER_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}


def _health_cells(h: dict[str, Any] | None) -> list[RenderableType]:
    """Outbox backlog, sagas in flight, breaker states and faults in force, from `<service>.health`."""
    if h is None:
        return ["—", "—", "—", "—"]
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
