"""Settings for every OMS process, read once from `OMS_*` and passed down."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.money import MONEY_LIMIT_CENTS

SERVICES = ("orders", "inventory", "payment")
SERVER_URL = re.compile(r"^((nats|tls|ws|wss)://)?([^\s:/@]+(:[^\s@/]*)?@)?[A-Za-z0-9_.\[\]:-]+(:\d{1,5})?$")


class Limits(BaseModel):
    """Input limits every endpoint enforces; a violation is a VALIDATION_ERROR naming the field."""

    max_items_per_order: int = Field(50, ge=1)
    max_qty_per_line: int = Field(1000, ge=1, le=1_000_000)
    max_payload_bytes: int = Field(64 * 1024, ge=1024)
    max_idempotency_key_len: int = Field(128, ge=8)


class SagaSettings(BaseModel):
    """Timeouts and retry policy of the place-order saga."""

    step_timeout_ms: int = Field(2000, ge=10)
    deadline_ms: int = Field(30_000, ge=100)
    retry_initial_ms: int = Field(100, ge=1)
    retry_multiplier: float = Field(2.0, ge=1.0)
    retry_max_interval_ms: int = Field(2000, ge=1)
    retry_max_attempts: int = Field(8, ge=1)
    max_concurrent: int = Field(512, ge=1)
    stuck_after_attempts: int = Field(5, ge=1)


class BreakerSettings(BaseModel):
    """Circuit breaker per downstream service."""

    threshold: int = Field(5, ge=1)
    ttl_ms: int = Field(2000, ge=10)


class Settings(BaseSettings):
    """Configuration shared by the services and the CLI."""

    model_config = SettingsConfigDict(env_prefix="OMS_", env_nested_delimiter="__", extra="ignore")

    home: Path = Path(".oms")
    nats_url: str | None = Field(
        None, description="an existing server or cluster: one URL or a comma-separated list; unset: `oms up` starts one"
    )
    nats_user: str | None = Field(
        None, description="NATS user; unset: the embedded server's generated credentials (bus.auth), or none"
    )
    nats_password: str | None = Field(None, repr=False)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    handler_concurrency: int = Field(512, ge=1)
    payment_limit_cents: int = Field(
        500_000, ge=0, le=MONEY_LIMIT_CENTS, description="authorizations above it are declined (amount_over_limit)"
    )
    currency: str = "USD"
    metrics_port_orders: int = 9101
    metrics_port_inventory: int = 9102
    metrics_port_payment: int = 9103
    metrics_host: str = "127.0.0.1"
    stream_name: str = "OMS_EVENTS"
    stream_max_age_s: int = Field(0, ge=0, description="0 keeps events forever")
    stream_duplicate_window_s: int = Field(600, ge=1)
    stream_replicas: int = Field(
        0, ge=0, le=5, description="copies of the event stream; 0: 3 on a cluster, 1 on one server (never lowered)"
    )
    durability: Literal["fsync", "nosync"] = Field(
        "fsync",
        description="fsync: every group commit and every JetStream write reaches the disk before it is "
        "acknowledged (survives power loss); nosync: the OS writes them back in its own time (survives any "
        "process crash, may lose the last changes on power loss)",
    )
    outbox_forget_after_s: float = Field(
        0.5, gt=0, le=3600, description="the longest acknowledged outbox rows wait for a write to delete them"
    )
    stop_budget_s: float = Field(
        8.0, gt=0, le=300, description="the longest a graceful stop takes (`oms down` kills after 10 s)"
    )
    client_patience_s: float = Field(
        8.0, ge=0, le=600, description="how long the CLI and `oms load` retry a call through a node loss"
    )
    limits: Limits = Limits()
    saga: SagaSettings = SagaSettings()
    breaker: BreakerSettings = BreakerSettings()

    @field_validator("nats_url")
    @classmethod
    def _server_list(cls, value: str | None) -> str | None:
        """One URL or a comma-separated list of them (a cluster's servers), written back normalised."""
        if value is None or not value.strip():
            return None
        servers = [part.strip() for part in value.split(",") if part.strip()]
        for server in servers:
            if not SERVER_URL.fullmatch(server):
                raise ValueError(f"{server!r} is not a NATS server URL (nats://host:port, tls://... or host:port)")
        return ",".join(servers)

    @property
    def data_dir(self) -> Path:
        """Where the services keep their databases."""
        return self.home / "data"

    def db_path(self, service: str) -> Path:
        return self.data_dir / f"{service}.db"

    def metrics_port(self, service: str) -> int:
        return getattr(self, f"metrics_port_{service}")

    @property
    def embedded_url_file(self) -> Path:
        """Where `oms up` records the URL of the nats-server it started."""
        return self.home / "nats.url"

    def resolved_nats_url(self) -> str:
        """The servers to use, comma-separated: OMS_NATS_URL, else the ones `oms up` started (one server or
        a cluster's), else the default port."""
        if self.nats_url:
            return self.nats_url
        if self.embedded_url_file.exists():
            return self.embedded_url_file.read_text().strip()
        return "nats://127.0.0.1:4222"

    def nats_servers(self) -> list[str]:
        """`resolved_nats_url` as the list nats-py connects to (it does not split a comma-separated one)."""
        return [server.strip() for server in self.resolved_nats_url().split(",") if server.strip()]
