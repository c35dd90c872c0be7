"""The `oms` CLI: flag handling and exit codes in-process; the real stack through `oms up` as subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import typer
from typer.testing import CliRunner

from bus import contract as c
from bus.errors import (
    Conflict,
    InternalError,
    InvalidRequest,
    NoResponders,
    NotFound,
    OutOfStock,
    PaymentDeclined,
    RequestTimeout,
    Unavailable,
)
from bus.natsserver import free_port
from bus.settings import SERVICES, Settings
from cli import stack
from cli.app import app
from cli.failures import ExitCode, exit_code, explain, order_outcome
from cli.orders import parse_items
from cli.views import money

runner = CliRunner()
PROCESSES = (*SERVICES, stack.NATS_SERVER)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any OMS_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    return env | extra


def oms(
    *args: str, env: dict[str, str], timeout: float = 90, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `oms ARGS` as a subprocess (`python -m cli`)."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env | {"COLUMNS": "200"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def processes_under(folder: Path) -> list[int]:
    """Live processes whose command line or OMS_HOME mentions `folder`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            text = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(folder).encode() in text and not gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def recorded_pids(home: Path) -> dict[str, int]:
    pids = {}
    for name in PROCESSES:
        path = home / "pids" / f"{name}.pid"
        if path.exists():
            pids[name] = int(path.read_text())
    return pids


def stack_env(home: Path) -> dict[str, str]:
    """A private stack: its own home, nats port and metrics ports, whatever runs elsewhere."""
    ports = {f"OMS_METRICS_PORT_{name.upper()}": str(free_port()) for name in SERVICES}
    return clean_env(OMS_HOME=str(home), OMS_NATS_PORT=str(free_port()), **ports)


def stop_everything(env: dict[str, str]) -> None:
    """`oms down`, then SIGKILL whatever of ours survived it (never anything else)."""
    oms("down", env=env)
    settings = Settings(home=Path(env["OMS_HOME"]))
    for name in PROCESSES:
        stack.kill(settings, name)


# -- without a stack ----------------------------------------------------------


def test_an_item_without_a_colon_is_a_usage_error_naming_the_flag():
    result = runner.invoke(app, ["order", "place", "--customer", "c1", "--item", "nonsense"])
    assert result.exit_code == ExitCode.USAGE
    assert "--item" in result.stderr and "SKU:QTY" in result.stderr


def test_an_item_quantity_must_be_a_whole_number():
    result = runner.invoke(app, ["order", "place", "--customer", "c1", "--item", "KB-101:two"])
    assert result.exit_code == ExitCode.USAGE
    assert "--item" in result.stderr


def test_a_customer_id_the_contract_refuses_is_a_usage_error_naming_the_flag():
    result = runner.invoke(app, ["order", "place", "--customer", "not valid", "--item", "KB-101:1"])
    assert result.exit_code == ExitCode.USAGE
    assert "--customer" in result.stderr


def test_an_unknown_payment_method_is_a_usage_error():
    result = runner.invoke(app, ["order", "place", "-c", "c1", "-i", "KB-101:1", "--method", "cash"])
    assert result.exit_code == ExitCode.USAGE


def test_items_parse_into_contract_lines():
    assert parse_items(["kb-101:2", "MS-202:1"]) == [{"sku": "KB-101", "qty": 2}, {"sku": "MS-202", "qty": 1}]
    for bad in (["KB-101"], ["KB-101:0"], [":3"], ["KB-101:1", "KB-101:2"]):
        with pytest.raises(typer.BadParameter) as refused:
            parse_items(bad)
        assert refused.value.param_hint == "'--item'"


def test_payment_methods_offered_are_the_contracts():
    result = runner.invoke(app, ["order", "place", "--help"], env={"COLUMNS": "200"})
    for method in ("card", "card_declined", "card_insufficient_funds"):
        assert method in result.stdout


def test_money_is_shown_from_integer_cents():
    assert money(8900) == "$89.00"
    assert money(123456789, "USD") == "$1,234,567.89"
    assert money(5, "EUR") == "€0.05"
    assert money(100, "CHF") == "1.00 CHF"
    assert money(None) == "—"


def test_errors_map_to_exit_codes_in_one_place():
    assert exit_code(OutOfStock("x")) == exit_code(PaymentDeclined("x")) == ExitCode.FAILED
    assert exit_code(NotFound("x")) == exit_code(Conflict("x")) == ExitCode.FAILED
    assert exit_code(InvalidRequest("x")) == ExitCode.USAGE
    for exc in (NoResponders("x"), RequestTimeout("x"), Unavailable("x"), InternalError("x")):
        assert exit_code(exc) == ExitCode.UNAVAILABLE
    assert exit_code(stack.StackError("x")) == ExitCode.UNAVAILABLE
    assert order_outcome(c.OrderStatus.FAILED) == ExitCode.FAILED
    assert order_outcome(c.OrderStatus.CONFIRMED) == ExitCode.OK


def test_no_responders_says_to_start_the_stack():
    message = explain(NoResponders("no service answers on orders.place", {"subject": "orders.place"}))
    assert message == "no service answers on orders.place: start it with `oms up`"


def test_a_timed_out_place_says_how_to_learn_the_outcome_safely():
    exc = RequestTimeout("no reply", {"subject": "orders.place", "idempotency_key": "k-1"})
    assert "--key k-1" in explain(exc)


def test_without_nats_a_command_exits_3_and_says_to_run_oms_up(tmp_path):
    dead = f"nats://127.0.0.1:{free_port()}"
    env = {"OMS_NATS_URL": dead, "OMS_HOME": str(tmp_path)}
    result = runner.invoke(app, ["order", "get", "ord_1"], env=env)
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "oms up" in result.stderr
    as_json = runner.invoke(app, ["inventory", "stock", "--json"], env=env)
    assert as_json.exit_code == ExitCode.UNAVAILABLE
    assert json.loads(as_json.stdout)["error"]["code"] == "UNAVAILABLE"


def test_status_without_nats_exits_3(tmp_path):
    env = {"OMS_NATS_URL": f"nats://127.0.0.1:{free_port()}", "OMS_HOME": str(tmp_path)}
    result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == ExitCode.UNAVAILABLE
    status = json.loads(result.stdout)
    assert status["healthy"] is False and status["nats_reachable"] is False


def test_schema_json_prints_every_contract_model_as_json_schema_and_a_table_without_it():
    result = runner.invoke(app, ["schema", "--json"])
    assert result.exit_code == 0
    assert set(json.loads(result.stdout)) == set(c.schemas())
    one = runner.invoke(app, ["schema", "PlaceOrder", "--output", "json"])
    assert "customer_id" in json.loads(one.stdout)["properties"]
    table = runner.invoke(app, ["schema"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "PlaceOrder" in table.stdout and "orders.place" in table.stdout
    with pytest.raises(ValueError):
        json.loads(table.stdout)
    fields = runner.invoke(app, ["schema", "Line"], env={"COLUMNS": "200"})
    assert "qty" in fields.stdout and "<= 1,000" in fields.stdout


def test_demo_lists_its_scenes_without_starting_anything():
    result = runner.invoke(app, ["demo", "--list", "--json"])
    assert result.exit_code == 0
    names = [scene["name"] for scene in json.loads(result.stdout)]
    assert names[:5] == ["health", "catalog", "happy", "out-of-stock", "declined"]
    assert {"breaker", "participant-killed", "orders-killed", "rebuild", "load", "audit"} <= set(names)
    assert runner.invoke(app, ["demo", "no-such-scene"]).exit_code == ExitCode.USAGE


def test_bad_configuration_is_a_usage_error():
    result = runner.invoke(app, ["status"], env={"OMS_METRICS_PORT_ORDERS": "lots"})
    assert result.exit_code == ExitCode.USAGE
    assert "OMS_METRICS_PORT_ORDERS" in result.stderr


# -- through the real stack -----------------------------------------------------


@dataclass
class Running:
    env: dict[str, str]
    home: Path
    up: subprocess.CompletedProcess[str]

    def oms(self, *args: str) -> subprocess.CompletedProcess[str]:
        return oms(*args, env=self.env)

    def json(self, *args: str) -> tuple[int, dict]:
        result = self.oms(*args, "--json")
        return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One stack for the module, started by `oms up` in a temporary OMS_HOME."""
    home = tmp_path_factory.mktemp("oms-home")
    env = stack_env(home)
    try:
        up = oms("up", env=env)
        assert up.returncode == 0, up.stderr
        yield Running(env, home, up)
    finally:
        stop_everything(env)


@pytest.mark.slow
async def test_up_prints_the_table_and_every_service_answers_ping(running: Running):
    for name in PROCESSES:
        assert name in running.up.stdout
    assert "orders.{place" in running.up.stdout
    cli_user = json.loads((running.home / "credentials" / "cli.json").read_text())
    nc = await nats.connect(
        (running.home / "nats.url").read_text().strip(),
        user=cli_user["user"],
        password=cli_user["password"],
    )
    try:
        for name in SERVICES:
            reply = await nc.request(f"$SRV.PING.{name}", b"", timeout=2)
            assert json.loads(reply.data)["name"] == name
    finally:
        await nc.close()


@pytest.mark.slow
def test_a_happy_order_is_confirmed_with_the_total_from_the_catalog_and_moves_stock(running: Running):
    _, before = running.json("inventory", "stock", "--sku", "KB-101")
    code, order = running.json("order", "place", "--customer", "c1", "--item", "KB-101:2")
    assert code == ExitCode.OK
    assert order["status"] == "CONFIRMED"
    assert order["total_cents"] == 2 * 8900
    _, after = running.json("inventory", "stock", "--sku", "KB-101")
    assert after["products"][0]["reserved"] == before["products"][0]["reserved"] + 2
    assert after["products"][0]["available"] == before["products"][0]["available"] - 2
    table = running.oms("inventory", "stock")
    assert table.returncode == 0 and "$89.00" in table.stdout and "KB-101" in table.stdout
    code, found = running.json("order", "get", order["order_id"])
    assert code == ExitCode.OK and found["order_id"] == order["order_id"]
    code, payment = running.json("payment", "get", order["order_id"])
    assert code == ExitCode.OK and payment["status"] == "AUTHORIZED" and payment["amount_cents"] == 17800
    code, listed = running.json("order", "list", "--customer", "c1", "--status", "confirmed")
    assert code == ExitCode.OK and order["order_id"] in [o["order_id"] for o in listed["orders"]]


@pytest.mark.slow
def test_a_declined_card_fails_the_order_with_exit_1(running: Running):
    result = running.oms("order", "place", "-c", "c2", "-i", "MS-202:1", "--method", "card_declined", "--json")
    assert result.returncode == ExitCode.FAILED
    order = json.loads(result.stdout)
    assert order["status"] == "FAILED" and order["failure_reason"] == "PAYMENT_DECLINED"


@pytest.mark.slow
def test_the_same_key_places_one_order(running: Running):
    args = ("order", "place", "-c", "c3", "-i", "CB-505:1", "--key", "cli-test-key-1")
    _, first = running.json(*args)
    _, again = running.json(*args)
    assert first["order_id"] == again["order_id"]


@pytest.mark.slow
def test_cancel_refunds_the_payment_and_releases_the_stock(running: Running):
    _, before = running.json("inventory", "stock", "--sku", "DK-606")
    _, order = running.json("order", "place", "-c", "c4", "-i", "DK-606:1")
    code, cancelled = running.json("order", "cancel", order["order_id"], "--reason", "changed my mind")
    assert code == ExitCode.OK
    assert cancelled["status"] == "CANCELLED"
    _, payment = running.json("payment", "get", order["order_id"])
    assert payment["status"] == "VOIDED"  # a cancel before shipment voids the authorization
    _, after = running.json("inventory", "stock", "--sku", "DK-606")
    assert after["products"][0]["reserved"] == before["products"][0]["reserved"]


@pytest.mark.slow
def test_an_order_ships_and_comes_back_in_two_returns_from_the_cli(running: Running):
    _, order = running.json("order", "place", "-c", "c-ship", "-i", "KB-101:2", "-i", "MS-202:1")
    oid = order["order_id"]
    code, shipped = running.json("order", "ship", oid)
    assert code == ExitCode.OK and shipped["status"] == "SHIPPED", shipped
    _, payment = running.json("payment", "get", oid)
    assert payment["status"] == "CAPTURED" and payment["captured_cents"] == order["total_cents"], payment
    more = running.oms("order", "return", oid, "--item", "KB-101:3", "--json")
    assert more.returncode == ExitCode.FAILED and "KB-101" in more.stderr + more.stdout
    code, part = running.json("order", "return", oid, "--item", "KB-101:1", "--reason", "too loud")
    assert code == ExitCode.OK and part["status"] == "PARTIALLY_RETURNED", part
    _, payment = running.json("payment", "get", oid)
    assert payment["status"] == "PARTIALLY_REFUNDED" and payment["refunded_cents"] == 8900, payment
    code, rest = running.json("order", "return", oid)  # everything not yet returned
    assert code == ExitCode.OK and rest["status"] == "RETURNED", rest
    _, payment = running.json("payment", "get", oid)
    assert payment["status"] == "REFUNDED" and payment["refunded_cents"] == order["total_cents"], payment
    _, timeline = running.json("order", "events", oid)
    kinds = [e["type"] for e in timeline["events"]]
    for kind in ("ship_requested", "order_shipped", "return_requested", "order_returned"):
        assert kind in kinds, kinds
    assert kinds.count("order_returned") == 2, kinds
    shown = running.oms("order", "get", oid)
    assert shown.returncode == ExitCode.OK, shown.stderr
    for name in ("place_order", "ship_order", "return_order", "commit_stock", "capture_payment", "refund_payment"):
        assert name in shown.stdout, name
    assert shown.stdout.count("(return_order)") == 2  # each return's saga, under its own title


@pytest.mark.slow
def test_an_unknown_order_is_not_found_with_exit_1(running: Running):
    result = running.oms("order", "get", "ord_does_not_exist")
    assert result.returncode == ExitCode.FAILED
    assert "NOT_FOUND" in result.stderr


@pytest.mark.slow
def test_status_shows_each_service_up_and_the_event_stream(running: Running):
    code, status = running.json("status")
    assert code == ExitCode.OK and status["healthy"] is True
    assert {s["name"] for s in status["services"] if s["answering"] and s["running"]} == set(SERVICES)
    assert status["stream"]["name"] == "OMS_EVENTS"


@pytest.mark.slow
def test_a_second_up_leaves_the_running_processes_alone(running: Running):
    before = recorded_pids(running.home)
    again = running.oms("up")
    assert again.returncode == 0, again.stderr
    assert recorded_pids(running.home) == before
    assert "started" not in again.stdout and "was running" in again.stdout


@pytest.mark.slow
def test_up_restarts_a_killed_service_and_only_that_one(running: Running):
    before = recorded_pids(running.home)
    settings = Settings(home=running.home)
    assert stack.kill(settings, "payment") == before["payment"]
    again = running.oms("up")
    assert again.returncode == 0, again.stderr
    after = recorded_pids(running.home)
    assert after["payment"] != before["payment"]
    assert {k: v for k, v in after.items() if k != "payment"} == {k: v for k, v in before.items() if k != "payment"}


@pytest.mark.slow
def test_down_stops_every_process_and_leaves_none_behind(tmp_path):
    env = stack_env(tmp_path / "home")
    try:
        up = oms("up", env=env)
        assert up.returncode == 0, up.stderr
        pids = recorded_pids(tmp_path / "home")
        assert set(pids) == set(PROCESSES)
        down = oms("down", "--json", env=env)
        assert down.returncode == 0
        assert {s["name"]: s["outcome"] for s in json.loads(down.stdout)} == dict.fromkeys(PROCESSES, "stopped")
        assert all(gone(pid) for pid in pids.values())
        assert recorded_pids(tmp_path / "home") == {}
        assert processes_under(tmp_path) == []
        after = oms("order", "get", "ord_1", env=env)
        assert after.returncode == ExitCode.UNAVAILABLE and "oms up" in after.stderr
    finally:
        stop_everything(env)


@pytest.mark.slow
def test_up_fails_with_the_end_of_the_log_when_a_service_dies_while_starting(tmp_path):
    fake = tmp_path / "fake" / "order_svc"  # shadows the real package for the children
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import sys\nprint('boom: no orders today', file=sys.stderr)\nsys.exit(7)\n")
    env = stack_env(tmp_path / "home") | {"PYTHONPATH": str(tmp_path / "fake")}
    try:
        up = oms("up", env=env, cwd=tmp_path)  # not the repo: `python -m` puts the cwd first on sys.path
        assert up.returncode == ExitCode.UNAVAILABLE
        assert "orders exited with code 7" in up.stderr
        assert "boom: no orders today" in up.stderr
    finally:
        stop_everything(env)
    assert processes_under(tmp_path) == []


@pytest.mark.slow
def test_the_demo_runs_to_the_end_and_leaves_nothing_behind(tmp_path):
    # The demo makes its home with mkdtemp: TMPDIR puts it where this test can look.
    env = clean_env(TMPDIR=str(tmp_path))
    result = oms("demo", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for scene in ("catalog", "happy", "out-of-stock", "declined", "leader-killed"):
        assert scene in result.stdout
    assert "✗" not in result.stdout
    assert "a cluster of 3 nats-servers" in result.stdout and "leads OMS_EVENTS now" in result.stdout
    assert "oms console" in result.stdout + result.stderr
    home = re.search(r"throwaway OMS on .*? in (\S+)", result.stdout)
    assert home and home.group(1).startswith(str(tmp_path))
    assert not Path(home.group(1)).exists()
    assert processes_under(tmp_path) == []
