"""Shared by the benchmarks: a throwaway embedded stack, and CPU/RSS of its processes from /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bus import auth
from bus.client import Client
from bus.connect import connect
from bus.settings import Settings
from cli import stack
from cli.loadgen import DEFAULT_SKUS, LoadPlan, ensure_stock, run_load

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others so far, over all CPUs (`steal` in /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / TICK if len(fields) > 8 else 0.0


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def pids(settings: Settings) -> dict[str, int]:
    """The stack's processes by name (services and nats-server), from OMS_HOME/pids."""
    found = {}
    for pid_file in (settings.home / "pids").glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            Path(f"/proc/{pid}/stat").stat()
            found[pid_file.stem] = pid
    return found


def as_admin(settings: Settings) -> Settings:
    """Settings that connect to the embedded stack as its `admin` user (restock, chaos, the audit)."""
    return auth.login(settings, "admin")


async def restock(settings: Settings, orders: int, skus: tuple[str, ...] = DEFAULT_SKUS) -> None:
    """Enough stock of `skus` for `orders` one-unit orders: a benchmark measures sagas that confirm."""
    nc = await connect(as_admin(settings), "bench-restock", persistent=False)
    try:
        await ensure_stock(Client(nc, timeout_s=10), LoadPlan(orders=orders, skus=skus))
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def embedded_stack(**env: str) -> AsyncIterator[Settings]:
    """Start nats-server and the three services in a temporary OMS_HOME on free ports; stop them after."""
    home = Path(tempfile.mkdtemp(prefix="oms-bench-"))
    saved = dict(os.environ)
    os.environ.update(
        {
            "OMS_HOME": str(home),
            "OMS_NATS_PORT": "0",
            "OMS_METRICS_PORT_ORDERS": "0",
            "OMS_METRICS_PORT_INVENTORY": "0",
            "OMS_METRICS_PORT_PAYMENT": "0",
            **env,
        }
    )
    os.environ.pop("OMS_NATS_URL", None)
    settings = Settings()
    try:
        await stack.up(settings)
        yield settings  # connect with `as_admin(settings)`: the embedded server has users
    finally:
        stack.down(settings)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


async def level(settings: Settings, concurrency: int, orders: int) -> dict:
    """`orders` orders at `concurrency` in flight: sagas/s, latency, and CPU per saga by process.

    CPU is counted from the first order sent to the last one answered: the load's connections are made
    before (each costs nats-server a bcrypt check of its password, 0.1 s of CPU or more, which is not a
    saga's) and closed after."""
    procs = pids(settings)
    cpu0: dict[str, float] = {}
    cpu1: dict[str, float] = {}
    client: list[float] = []

    def sample(into: dict[str, float]) -> None:
        into.update({name: cpu_seconds(pid) for name, pid in procs.items()})
        client.append(time.process_time())

    result = await run_load(
        settings,
        LoadPlan(orders=orders, concurrency=concurrency, connections=4, max_seconds=300),
        on_start=lambda: sample(cpu0),
        on_end=lambda: sample(cpu1),
    )
    done = max(1, result.terminal)
    per_process = {name: (cpu1[name] - cpu0[name]) / done * 1e6 for name in procs}
    d = result.to_dict()
    return {
        "concurrency": concurrency,
        "orders": orders,
        "sagas_per_s": d["sagas_per_s"],
        "latency_ms": d["latency_ms"],
        "outcomes": d["outcomes"],
        "errors": d["errors"],
        "cpu_us_per_saga": round(sum(per_process.values()), 1),
        "cpu_us_per_saga_by_process": {k: round(v, 1) for k, v in per_process.items()},
        "client_cpu_us_per_saga": round((client[1] - client[0]) / done * 1e6, 1),
    }
