"""`oms metrics`: scrape each service's Prometheus /metrics and sum it up: requests and latency, sagas,
retries, compensations, breakers, outbox, stock."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bus.settings import SERVICES, Settings
from cli import completion
from cli.failures import ExitCode
from cli.options import JsonFlag, OutputOption
from cli.output import Output, plain
from cli.session import settings_of

app = typer.Typer()

SCRAPE_TIMEOUT_S = 2.0
BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}


@dataclass
class Endpoint:
    endpoint: str
    outcomes: dict[str, int] = field(default_factory=dict)
    p50_s: float | None = None
    p99_s: float | None = None

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())


@dataclass
class Scrape:
    """What one service's /metrics says, summed up; `error` when it could not be read."""

    service: str
    url: str | None
    error: str | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
    sagas: dict[str, int] = field(default_factory=dict)
    sagas_in_flight: int | None = None
    step_retries: dict[str, int] = field(default_factory=dict)
    compensations: dict[str, dict[str, int]] = field(default_factory=dict)
    breakers: dict[str, str] = field(default_factory=dict)
    outbox_backlog: int | None = None
    outbox_lag_s: float | None = None
    events_published: int | None = None
    stock: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return self.error is None


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the q-th rank."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the highest finite bound: that bound is all we know
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = upper, count
    return lower


def summarize(service: str, url: str, text: str) -> Scrape:
    scrape = Scrape(service, url)
    outcomes: dict[str, dict[str, int]] = defaultdict(dict)
    latency: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "oms_requests_total":
                outcomes[labels["endpoint"]][labels["outcome"]] = int(value)
            elif name == "oms_request_duration_seconds_bucket":
                latency[labels["endpoint"]].append((float(labels["le"]), value))
            elif name == "oms_sagas_total":
                scrape.sagas[labels["outcome"]] = int(value)
            elif name == "oms_sagas_in_flight":
                scrape.sagas_in_flight = int(value)
            elif name == "oms_saga_step_retries_total":
                scrape.step_retries[labels["step"]] = int(value)
            elif name == "oms_compensations_total":
                scrape.compensations.setdefault(labels["step"], {})[labels["outcome"]] = int(value)
            elif name == "oms_circuit_breaker_state":
                scrape.breakers[labels["target"]] = BREAKER_STATES.get(int(value), str(value))
            elif name == "oms_outbox_backlog_events":
                scrape.outbox_backlog = int(value)
            elif name == "oms_outbox_lag_seconds":
                scrape.outbox_lag_s = value
            elif name == "oms_events_published_total":
                scrape.events_published = int(value)
            elif name == "oms_stock_on_hand_units":
                scrape.stock.setdefault(labels["sku"], {})["on_hand"] = int(value)
            elif name == "oms_stock_reserved_units":
                scrape.stock.setdefault(labels["sku"], {})["reserved"] = int(value)
    for endpoint in sorted(set(outcomes) | set(latency)):
        buckets = latency.get(endpoint, [])
        scrape.endpoints.append(
            Endpoint(endpoint, outcomes.get(endpoint, {}), quantile(0.5, buckets), quantile(0.99, buckets))
        )
    return scrape


def scrape(settings: Settings, service: str) -> Scrape:
    port = settings.metrics_port(service)
    if not port:
        return Scrape(service, None, error=f"metrics are off (OMS_METRICS_PORT_{service.upper()}=0)")
    url = f"http://{settings.metrics_host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return Scrape(service, url, error=f"unreachable ({reason})")
    try:
        return summarize(service, url, text)
    except ValueError as exc:
        return Scrape(service, url, error=f"not Prometheus text ({exc})")


# -- views ------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (kv[0] != "OK", kv[0]))) or "—"


def view(scrapes: list[Scrape]) -> RenderableType:
    services = Table(title="Services", title_justify="left")
    for column, justify in (
        ("Service", "left"),
        ("Metrics", "left"),
        ("Outbox backlog", "right"),
        ("Outbox lag", "right"),
        ("Events published", "right"),
    ):
        services.add_column(column, justify=justify)
    requests = Table(title="Requests by endpoint and outcome", title_justify="left")
    for column, justify in (("Endpoint", "left"), ("Requests", "right"), ("Outcomes", "left")):
        requests.add_column(column, justify=justify)
    requests.add_column("p50", justify="right")
    requests.add_column("p99", justify="right")
    parts: list[RenderableType] = [services]
    for s in scrapes:
        if not s.reachable:
            services.add_row(s.service, Text(s.error or "", style="bold red"), "—", "—", "—")
            continue
        services.add_row(
            s.service,
            Text(s.url or "", style="green"),
            "—" if s.outbox_backlog is None else str(s.outbox_backlog),
            "—" if s.outbox_lag_s is None else f"{s.outbox_lag_s:.1f} s",
            "—" if s.events_published is None else str(s.events_published),
        )
        for e in s.endpoints:
            if e.requests:
                errors = e.requests - e.outcomes.get("OK", 0)
                requests.add_row(
                    e.endpoint,
                    str(e.requests),
                    Text(_counts(e.outcomes), style="red" if errors else ""),
                    _ms(e.p50_s),
                    _ms(e.p99_s),
                )
    if requests.row_count:
        parts.append(requests)
    for s in scrapes:
        if s.reachable and (s.sagas or s.sagas_in_flight or s.breakers or s.step_retries or s.compensations):
            parts.append(_sagas(s))
    stock = [s for s in scrapes if s.reachable and s.stock]
    if stock:
        parts.append(_stock(stock[0]))
    return Group(*parts)


def _sagas(s: Scrape) -> Table:
    table = Table(title=f"Sagas ({s.service})", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("finished", _counts(s.sagas))
    table.add_row("in flight", "—" if s.sagas_in_flight is None else str(s.sagas_in_flight))
    table.add_row("step retries", _counts(s.step_retries))
    comp = {f"{step} {outcome}": n for step, by in s.compensations.items() for outcome, n in by.items()}
    table.add_row("compensations", _counts(comp))
    breakers = Text()
    for target, state in sorted(s.breakers.items()):
        style = {"closed": "green", "half-open": "yellow", "open": "bold red"}.get(state, "")
        breakers.append(f"{target} ", style="")
        breakers.append(state, style=style)
        breakers.append("  ")
    table.add_row("breakers", breakers if s.breakers else "— (none changed since start)")
    return table


def _stock(s: Scrape) -> Table:
    table = Table(title=f"Stock ({s.service})", title_justify="left")
    for column, justify in (("SKU", "left"), ("On hand", "right"), ("Reserved", "right"), ("Available", "right")):
        table.add_column(column, justify=justify)
    for sku, levels in sorted(s.stock.items()):
        on_hand, reserved = levels.get("on_hand", 0), levels.get("reserved", 0)
        table.add_row(sku, str(on_hand), str(reserved), str(on_hand - reserved))
    return table


@app.command()
def metrics(
    ctx: typer.Context,
    service: Annotated[
        str | None,
        typer.Argument(
            metavar="SERVICE", help=f"One of {', '.join(SERVICES)}; default all.", autocompletion=completion.services
        ),
    ] = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Sum up each service's Prometheus metrics; exit 3 when none answers.

    Requests by endpoint and outcome with p50/p99 latency (estimated from the histogram buckets), sagas
    by outcome, step retries, compensations, breakers, outbox backlog, stock per SKU.
    """
    if service is not None and service not in SERVICES:
        raise typer.BadParameter(f"{service!r} is not one of {', '.join(SERVICES)}", param_hint="'SERVICE'")
    settings = settings_of(ctx)
    names = [service] if service else list(SERVICES)
    with ThreadPoolExecutor(len(names)) as pool:
        scrapes = list(pool.map(lambda name: scrape(settings, name), names))
    raw = {s.service: plain(s) | {"reachable": s.reachable} for s in scrapes}
    Output.of(output, as_json).result(raw, view(scrapes))
    raise typer.Exit(ExitCode.OK if any(s.reachable for s in scrapes) else ExitCode.UNAVAILABLE)
