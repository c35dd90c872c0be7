"""Prometheus metrics, on a registry each service owns (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every metric an OMS service exports; names `oms_*`, units in the name, few labels."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
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
        self.events_published = Counter("oms_events_published_total", "Events acknowledged by JetStream", registry=r)
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
        self.stock_on_hand = Gauge("oms_stock_on_hand_units", "Units on hand", ["sku"], registry=r)
        self.stock_reserved = Gauge("oms_stock_reserved_units", "Units reserved", ["sku"], registry=r)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a daemon thread; port 0 disables it."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
