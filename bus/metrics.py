"""Prometheus metrics, on a registry each service owns (never the global one).

Who updates what: requests and their latency, chaos settings — the service runner (`bus.service`);
messages from NATS dropped because they cannot be decoded — the connection (`bus.frames`, via `bus.app`);
sagas, their duration, in flight, step attempts and retries, compensations — the saga engine
(`bus.saga.driver`, `bus.saga.engine`); breaker state and step latency — the order service; stock — the
inventory service;
outbox backlog, lag and events published — read live from the relay (`bus.app`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from bus.frames import DROP_REASONS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class FunctionCounter(Collector):
    """A counter whose value is read from a function at scrape time (a count kept elsewhere)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self._read: Callable[[], float] = lambda: 0.0
        registry.register(self)

    def set_function(self, read: Callable[[], float]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=float(self._read()))

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation)


@dataclass
class MetricsServer:
    """The /metrics HTTP server of one service; `stop` shuts it down and frees the port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class Metrics:
    """Every metric an OMS service exports; names `oms_*`, units in the name, few labels."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "oms_requests_total",
            "Requests answered, by endpoint and outcome code",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.request_latency = Histogram(
            "oms_request_duration_seconds",
            "Time from receipt to reply",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chaos_active = Gauge(
            "oms_chaos_setting",
            "Fault injection in force",
            ["setting"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "oms_outbox_backlog_events", "Events committed but not yet in JetStream", registry=r
        )
        self.outbox_lag = Gauge("oms_outbox_lag_seconds", "Age of the oldest unpublished event", registry=r)
        self.events_published = FunctionCounter(
            "oms_events_published_total", "Events acknowledged by JetStream", registry=r
        )
        self.sagas = Counter("oms_sagas_total", "Sagas finished, by outcome", ["outcome"], registry=r)
        self.saga_duration = Histogram(
            "oms_saga_duration_seconds",
            "Saga start to terminal state",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sagas_in_flight = Gauge("oms_sagas_in_flight", "Sagas running now", registry=r)
        self.step_attempts = Counter(
            "oms_saga_step_attempts_total",
            "Step attempts, by step and outcome",
            ["step", "outcome"],
            registry=r,
        )
        self.step_retries = Counter("oms_saga_step_retries_total", "Step retries", ["step"], registry=r)
        self.step_duration = Histogram(
            "oms_saga_step_duration_seconds",
            "Time a step's request to its participant took, by step and action (invoke or compensate)",
            ["step", "action"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.saga_runs = Counter(
            "oms_saga_runs_total",
            "Sagas finished, by definition (place_order, ship_order: shipments, return_order: returns) and outcome",
            ["saga", "outcome"],
            registry=r,
        )
        self.money = Counter(
            "oms_payment_cents_total",
            "Money moved by the payment service, by kind: authorized, captured, refunded, capture_reversed",
            ["kind"],
            registry=r,
        )
        self.compensations = Counter(
            "oms_compensations_total",
            "Compensations, by step and outcome",
            ["step", "outcome"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "oms_circuit_breaker_state",
            "0 closed, 1 half-open, 2 open",
            ["target"],
            registry=r,
        )
        self.dropped_messages = Counter(
            "oms_nats_messages_dropped_total",
            "Messages from NATS dropped because they could not be decoded, by what was wrong",
            ["reason"],
            registry=r,
        )
        for reason in DROP_REASONS:  # shown from the start, at zero
            self.child(self.dropped_messages, reason)
        self.stock_on_hand = Gauge("oms_stock_on_hand_units", "Units on hand", ["sku"], registry=r)
        self.stock_reserved = Gauge("oms_stock_reserved_units", "Units reserved", ["sku"], registry=r)

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: prometheus-client checks the values and takes a lock on
        every `labels` call (about 2.3 us here), and the hot paths count with the same few label sets."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def serve(self, host: str, port: int) -> MetricsServer | None:
        """Serve /metrics on a daemon thread until `stop`; port 0 disables it."""
        if not port:
            return None
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(server, thread)
