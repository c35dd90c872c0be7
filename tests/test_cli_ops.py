"""The operator commands of `oms`: audit, saga, chaos, recover, events tail, logs, metrics, status health.

Flag checks and file reading run in-process; the rest runs against one real stack started with `oms up`
in a temporary OMS_HOME (see tests/test_cli.py), as subprocesses.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from typer.testing import CliRunner

from bus.audit import Check, Report
from bus.natsserver import free_port
from bus.settings import SERVICES
from cli import audit as cli_audit
from cli.app import app
from cli.failures import ExitCode
from cli.metrics import quantile
from cli.processes import port_busy
from tests.test_cli import clean_env, oms, stack_env, stop_everything

runner = CliRunner()
HAPPY = ["order_created", "stock_reserved", "payment_authorized", "order_confirmed"]


def eventually(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `condition` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Background:
    """`oms ARGS` running on its own; its stdout and stderr lines are read as they come."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env=env | {"COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, lines: queue.Queue[str]) -> None:
        for line in stream:
            lines.put(line)

    def line(self, lines: queue.Queue[str], containing: str = "", timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if containing in line:
                return line

    def finish(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- without a stack ----------------------------------------------------------


def test_a_rate_outside_0_to_1_is_a_usage_error_naming_the_flag():
    for flag in ("--error-rate", "--drop-reply-rate"):
        result = runner.invoke(app, ["chaos", "set", "inventory", flag, "1.5"])
        assert result.exit_code == ExitCode.USAGE
        assert flag in result.stderr


def test_chaos_set_needs_a_fault_and_a_known_service_and_endpoint():
    assert runner.invoke(app, ["chaos", "set", "inventory"]).exit_code == ExitCode.USAGE
    assert runner.invoke(app, ["chaos", "set", "warehouse", "--error-rate", "0.1"]).exit_code == ExitCode.USAGE
    unknown = runner.invoke(app, ["chaos", "set", "payment", "--error-rate", "0.1", "--endpoint", "reserve"])
    assert unknown.exit_code == ExitCode.USAGE
    assert "--endpoint" in unknown.stderr and "authorize" in unknown.stderr


def test_events_tail_refuses_a_filter_that_is_not_one_subject_token():
    result = runner.invoke(app, ["events", "tail", "--order", "ord.>"])
    assert result.exit_code == ExitCode.USAGE and "--order" in result.stderr


def test_latency_quantiles_are_interpolated_inside_their_bucket():
    buckets = [(0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.25, buckets) == pytest.approx(0.055)
    assert quantile(0.99, buckets) == pytest.approx(0.982)
    assert quantile(0.99, [(0.5, 0.0), (float("inf"), 4.0)]) == 0.5  # past the last bound: that bound
    assert quantile(0.5, [(0.5, 0.0), (float("inf"), 0.0)]) is None


def test_a_metrics_port_left_in_time_wait_by_a_scrape_is_free_for_the_next_up():
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=CollectorRegistry())
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        assert port_busy("127.0.0.1", port)
    finally:
        server.shutdown()
        server.server_close()
    assert not port_busy("127.0.0.1", port)  # `oms down; oms up` right after `oms metrics` works


def test_without_anything_running_the_operator_commands_exit_3(tmp_path):
    dead = {"OMS_NATS_URL": f"nats://127.0.0.1:{free_port()}", "OMS_HOME": str(tmp_path)}
    ports = {f"OMS_METRICS_PORT_{name.upper()}": str(free_port()) for name in SERVICES}
    for args in (["audit"], ["saga", "list"], ["chaos", "show"], ["events", "tail", "--limit", "1"], ["metrics"]):
        result = runner.invoke(app, args, env=dead | ports)
        assert result.exit_code == ExitCode.UNAVAILABLE, (args, result.output)
    assert runner.invoke(app, ["logs"], env=dead).exit_code == ExitCode.UNAVAILABLE  # no logs here


def test_audit_exits_1_and_names_the_offenders_when_an_invariant_is_broken(monkeypatch):
    broken = Check(2, "confirmed orders are reserved and charged exactly", checked=5)
    for n in range(5):
        broken.fail(f"ord_{n}: no active reservation")
    report = Report([Check(1, "no SKU is oversold", checked=3), broken], orders=5, events=20)

    async def audit_once(settings: Any) -> Report:
        return report

    monkeypatch.setattr(cli_audit, "audit_once", audit_once)
    result = runner.invoke(app, ["audit"], env={"COLUMNS": "200"})
    assert result.exit_code == ExitCode.FAILED
    assert "ord_0: no active reservation" in result.stdout and "… and 2 more" in result.stdout
    assert "ord_3" not in result.stdout and "5 violation(s) of 1 invariant(s)" in result.stdout
    as_json = runner.invoke(app, ["audit", "--json"])
    assert as_json.exit_code == ExitCode.FAILED and json.loads(as_json.stdout)["violations"] == 5


def test_a_failed_rebuild_exits_3_and_says_why(nats_server: str, tmp_path):
    env = {"OMS_NATS_URL": nats_server, "OMS_HOME": str(tmp_path), "OMS_STREAM_NAME": "OMS_NO_SUCH_STREAM"}
    result = runner.invoke(app, ["recover", "payment"], env=env)
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "stream OMS_NO_SUCH_STREAM not found" in result.stderr
    assert not (tmp_path / "data" / "payment.db").exists()


def write_logs(home: Path) -> None:
    """Three services' logs as bus.logs.JsonLines writes them, with a traceback after one line."""
    logs = home / "logs"
    logs.mkdir(parents=True)
    line = lambda ts, service, event, **extra: json.dumps(  # noqa: E731
        {"ts": f"2026-01-01T10:00:0{ts}.000Z", "level": "info", "service": service, "event": event, **extra}
    )
    (logs / "orders.log").write_text(
        "\n".join(
            [
                line(1, "orders", "service ready"),
                line(4, "orders", "saga driver failed", saga_id="saga_T1", order_id="ord_T1"),
                "Traceback (most recent call last):",
                '  File "x.py", line 1',
                line(6, "orders", "other saga", saga_id="saga_T2"),
            ]
        )
        + "\n"
    )
    (logs / "inventory.log").write_text(
        line(2, "inventory", "service ready") + "\n" + line(5, "inventory", "released", detail="for ord_T1") + "\n"
    )
    (logs / "payment.log").write_text(
        line(3, "payment", "refund", order_id="ord_T1") + "\n" + line(7, "payment", "refund", order_id="ord_T2") + "\n"
    )


def test_logs_interleave_the_services_by_time_and_keep_an_orders_lines_with_their_traceback(tmp_path):
    write_logs(tmp_path)
    result = runner.invoke(app, ["--home", str(tmp_path), "logs", "--order", "ord_T1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines if line[:2].isdigit()] == ["payment", "orders", "inventory"]
    assert "Traceback (most recent call last):" in lines and "saga_id=saga_T1" in result.stdout
    assert "saga_T2" not in result.stdout and "ord_T2" not in result.stdout
    everything = runner.invoke(app, ["--home", str(tmp_path), "logs", "--json"])
    records = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [r.get("ts", "")[17:19] for r in records if "event" in r] == ["01", "02", "03", "04", "05", "06", "07"]
    assert {"raw": "Traceback (most recent call last):"}.items() <= records[4].items()
    one = runner.invoke(app, ["--home", str(tmp_path), "logs", "payment", "-n", "1", "--json"])
    assert [json.loads(line)["order_id"] for line in one.stdout.splitlines()] == ["ord_T2"]


def test_logs_follow_prints_new_lines_and_ctrl_c_exits_0(tmp_path):
    write_logs(tmp_path)
    follower = Background("--home", str(tmp_path), "logs", "inventory", "-f", "--json", env=clean_env())
    try:
        follower.line(follower.stdout, "released")
        with open(tmp_path / "logs" / "inventory.log", "a") as log:
            log.write(json.dumps({"ts": "2026-01-01T10:00:09.000Z", "level": "warning", "event": "late"}) + "\n")
        assert json.loads(follower.line(follower.stdout, "late"))["level"] == "warning"
        follower.proc.send_signal(signal.SIGINT)
        assert follower.finish() == 0
    finally:
        follower.kill()


# -- through the real stack -----------------------------------------------------


@dataclass
class Running:
    env: dict[str, str]
    home: Path

    def oms(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return oms(*args, env=self.env, timeout=timeout)

    def json(self, *args: str) -> tuple[int, Any]:
        result = self.oms(*args, "--json")
        return result.returncode, json.loads(result.stdout)

    def place(self, *args: str) -> dict[str, Any]:
        result = self.oms("order", "place", *args, "--json")
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("oms-ops")
    env = stack_env(home)
    try:
        up = oms("up", env=env)
        assert up.returncode == 0, up.stderr
        yield Running(env, home)
    finally:
        stop_everything(env)


@pytest.fixture(scope="module")
def happy(running: Running) -> dict[str, Any]:
    """A confirmed order, with a declined one and another confirmed one placed beside it."""
    order = running.place("-c", "ops1", "-i", "KB-101:2")
    assert order["status"] == "CONFIRMED"
    assert running.place("-c", "ops2", "-i", "MS-202:1", "-m", "card_declined")["status"] == "FAILED"
    assert running.place("-c", "ops3", "-i", "CB-505:3")["status"] == "CONFIRMED"
    return order


@pytest.mark.slow
def test_audit_is_clean_after_a_few_orders(running: Running, happy: dict[str, Any]):
    code, report = running.json("audit")
    assert code == ExitCode.OK
    assert report["ok"] is True and report["orders"] >= 3
    assert [check["invariant"] for check in report["checks"]] == [1, 2, 3, 4, 5, 6]
    table = running.oms("audit")
    assert table.returncode == 0 and "all hold" in table.stdout and "no SKU is oversold" in table.stdout


@pytest.mark.slow
def test_order_events_show_the_four_happy_events_with_offsets_and_steps(running: Running, happy: dict[str, Any]):
    code, timeline = running.json("order", "events", happy["order_id"])
    assert code == ExitCode.OK
    assert sorted(e["type"] for e in timeline["events"]) == sorted(HAPPY)
    table = running.oms("order", "events", happy["order_id"]).stdout
    for word in (*HAPPY, "+ms", "Step", "Attempt", "$178.00", "reserve_stock"):
        assert word in table


@pytest.mark.slow
def test_events_tail_replays_an_orders_events_and_stops_at_the_limit(running: Running, happy: dict[str, Any]):
    args = ("events", "tail", "--from-start", "--order", happy["order_id"], "--limit", "4", "--json")
    result = running.oms(*args)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(e["type"] for e in events) == sorted(HAPPY)
    assert {e["order_id"] for e in events} == {happy["order_id"]}
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


@pytest.mark.slow
def test_events_tail_follows_new_events_and_ctrl_c_exits_0(running: Running):
    confirmed = Background("events", "tail", "--type", "order_confirmed", "--limit", "1", "--json", env=running.env)
    everything = Background("events", "tail", env=running.env)
    try:
        confirmed.line(confirmed.stderr, "following")
        everything.line(everything.stderr, "following")
        order = running.place("-c", "ops-tail", "-i", "HD-404:1")
        assert confirmed.finish() == 0
        event = json.loads(confirmed.line(confirmed.stdout, "order_confirmed"))
        assert event["order_id"] == order["order_id"] and event["service"] == "orders"
        assert order["order_id"] in everything.line(everything.stdout, "order_confirmed")
        everything.proc.send_signal(signal.SIGINT)
        assert everything.finish() == 0
    finally:
        confirmed.kill()
        everything.kill()


@pytest.mark.slow
def test_saga_list_and_show_for_a_placed_order(running: Running, happy: dict[str, Any]):
    code, listed = running.json("saga", "list", "--status", "completed")
    assert code == ExitCode.OK
    saga = next(s for s in listed["sagas"] if s["ref"] == happy["order_id"])
    assert saga["status"] == "COMPLETED"
    code, shown = running.json("saga", "show", saga["saga_id"])
    assert code == ExitCode.OK
    assert [(s["step"], s["status"]) for s in shown["steps"]] == [
        ("reserve_stock", "SUCCEEDED"),
        ("authorize_payment", "SUCCEEDED"),
        ("confirm_order", "SUCCEEDED"),
    ]
    table = running.oms("saga", "show", happy["order_id"])  # an order id finds its saga
    assert table.returncode == 0
    for word in (saga["saga_id"], "Attempts", "Start", "Duration", "Uncertain", "authorize_payment"):
        assert word in table.stdout
    code, stuck = running.json("saga", "list", "--stuck")
    assert code == ExitCode.OK and stuck["sagas"] == []
    missing = running.oms("saga", "show", "saga_nope")
    assert missing.returncode == ExitCode.FAILED and "NOT_FOUND" in missing.stderr


@pytest.mark.slow
def test_chaos_set_show_clear_round_trip_and_status_shows_the_faults(running: Running):
    code, states = running.json("chaos", "set", "inventory", "--latency-ms", "5", "--error-rate", "0.25", "-e", "check")
    assert code == ExitCode.OK
    assert states == [
        {
            "service": "inventory",
            "error_rate": 0.25,
            "latency_ms": 5,
            "latency_jitter_ms": 0,
            "drop_reply_rate": 0.0,
            "endpoints": ["check"],
            "seed": None,
            "active": True,
        }
    ]
    code, shown = running.json("chaos", "show")
    assert code == ExitCode.OK
    assert {s["service"]: s["active"] for s in shown} == {"orders": False, "inventory": True, "payment": False}
    code, status = running.json("status")
    health = {s["name"]: s["health"] for s in status["services"]}
    assert health["inventory"]["chaos"]["active"] is True and health["inventory"]["outbox_backlog"] == 0
    assert set(health["orders"]["breakers"]) == {"inventory", "payment"}
    assert "errors 25%" in running.oms("status").stdout
    code, cleared = running.json("chaos", "clear")
    assert code == ExitCode.OK and [s["active"] for s in cleared] == [False, False, False]
    assert "none" in running.oms("chaos", "show", "inventory").stdout


@pytest.mark.slow
def test_an_operator_aborts_a_saga_stuck_on_a_failing_payment(running: Running):
    assert running.oms("chaos", "set", "payment", "--error-rate", "1", "--endpoint", "authorize").returncode == 0
    try:
        order = running.place("-c", "ops-abort", "-i", "MN-303:1", "--wait-ms", "0")
        saga = eventually(
            lambda: (
                (s := running.json("saga", "show", order["order_id"])[1])["status"] == "RUNNING"
                and s["attempts"] >= 1
                and s
            ),
            what="the saga retrying its payment",
        )
        assert running.oms("saga", "retry", saga["saga_id"]).returncode == 0
        code, aborted = running.json("saga", "abort", saga["saga_id"], "--reason", "operator test")
    finally:
        running.oms("chaos", "clear", "payment")
    assert code == ExitCode.OK
    done = eventually(
        lambda: (s := running.json("saga", "show", saga["saga_id"])[1])["status"] == "FAILED" and s,
        what="the aborted saga to end",
    )
    assert done["failure_reason"] == "ABORTED" and aborted["saga_id"] == saga["saga_id"]
    # The payment it was retrying when aborted is no longer shown as retrying: the saga turned back from it.
    forward = {step["step"]: step["status"] for step in done["steps"] if step["action"] == "invoke"}
    assert forward["authorize_payment"] == "ABANDONED" and "RETRYING" not in forward.values()
    again = running.oms("saga", "retry", saga["saga_id"])
    assert again.returncode == ExitCode.FAILED and "CONFLICT" in again.stderr


@pytest.mark.slow
def test_metrics_sum_up_the_orders_endpoints(running: Running, happy: dict[str, Any]):
    code, scraped = running.json("metrics")
    assert code == ExitCode.OK
    assert all(scraped[name]["reachable"] for name in SERVICES)
    place = next(e for e in scraped["orders"]["endpoints"] if e["endpoint"] == "orders.place")
    assert place["outcomes"]["OK"] >= 2 and place["p50_s"] > 0
    assert scraped["inventory"]["stock"]["KB-101"]["reserved"] >= 2
    table = running.oms("metrics", "orders").stdout
    for word in ("orders.place", "p99", "Sagas (orders)", "completed"):
        assert word in table


@pytest.mark.slow
def test_logs_show_every_service(running: Running, happy: dict[str, Any]):
    result = running.oms("logs", "--json")
    assert result.returncode == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    ready = {r["service"] for r in records if r.get("event") == "service ready"}
    assert ready == set(SERVICES)
    saga_id = "saga_" + happy["order_id"].removeprefix("ord_")
    found = running.oms("logs", "--order", happy["order_id"], "--json")
    assert found.returncode == 0
    mine = [json.loads(line) for line in found.stdout.splitlines()]
    assert {r["service"] for r in mine} == set(SERVICES)  # each service logs the requests of the saga
    assert all(happy["order_id"] in json.dumps(r) or saga_id in json.dumps(r) for r in mine)
    assert [r["ts"] for r in mine] == sorted(r["ts"] for r in mine)
    readable = running.oms("logs", "--order", happy["order_id"]).stdout
    assert f"order_id={happy['order_id']}" in readable


@pytest.mark.slow
def test_recover_refuses_while_the_service_runs(running: Running):
    result = running.oms("recover", "inventory")
    assert result.returncode == ExitCode.USAGE
    assert "stop it first: `oms down`" in result.stderr


@pytest.mark.slow
def test_recover_rebuilds_a_lost_inventory_database(running: Running, happy: dict[str, Any]):
    # Last in this file: it stops and restarts the stack.
    code, before = running.json("inventory", "stock")
    assert code == ExitCode.OK
    assert running.oms("down").returncode == 0
    db = running.home / "data" / "inventory.db"
    for lost in (db, db.with_name("inventory.db-wal"), db.with_name("inventory.db-shm")):
        lost.unlink(missing_ok=True)
    code, stats = running.json("recover", "inventory")
    assert code == ExitCode.OK
    assert stats["service"] == "inventory" and stats["applied"] == stats["total"] > 0
    assert db.exists()
    up = running.oms("up")
    assert up.returncode == 0, up.stderr
    code, after = running.json("inventory", "stock")
    assert code == ExitCode.OK and after == before
    code, report = running.json("audit")
    assert code == ExitCode.OK and report["ok"] is True


def test_recover_stops_the_nats_server_it_started_and_nothing_else(tmp_path: Path):
    from rich.console import Console

    from bus.settings import Settings
    from cli import stack as cli_stack
    from cli.processes import NATS_SERVER, Layout, is_ours, running_pid
    from cli.recover import nats_for_recovery

    home = tmp_path / "home"
    layout = Layout.of(Settings(home=home))
    layout.home.mkdir(parents=True)
    (layout.home / "pids").mkdir(exist_ok=True)
    # A payment service of this home that runs while its nats-server is gone (a stand-in: same command line).
    package = tmp_path / "code" / "payment_svc"
    package.mkdir(parents=True)
    (package / "__main__.py").write_text("import time\ntime.sleep(120)\n")
    service = subprocess.Popen(
        [sys.executable, "-m", "payment_svc"], cwd=package.parent, env=clean_env(OMS_HOME=str(home))
    )
    try:
        layout.pid_file("payment").write_text(str(service.pid))
        eventually(lambda: is_ours(layout, "payment", service.pid), what="the stand-in to run")
        settings = Settings(home=home)
        config = cli_stack.StackSettings(nats_port=free_port())
        with nats_for_recovery(settings, config, Console(quiet=True)):
            assert running_pid(settings, NATS_SERVER) is not None
        assert running_pid(settings, NATS_SERVER) is None
        assert service.poll() is None and running_pid(settings, "payment") == service.pid  # left running
    finally:
        service.kill()
        service.wait()
        cli_stack.stop(Settings(home=home), [NATS_SERVER])
