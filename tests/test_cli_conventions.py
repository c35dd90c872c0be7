"""The `oms` CLI as users of the `nats`, Temporal and DBOS CLIs expect it: tables that never cut an id or a
status, one set of paging and filter flags on every list, `--output`, completion from a running stack,
versions, plain words. In-process through Typer's CliRunner (COLUMNS=80 and 200) against one real stack
started with `oms up`, and without a stack where none is needed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from bus import __version__, auth
from bus.contract import API_VERSION
from bus.settings import SERVICES, Settings
from cli.app import app
from cli.failures import ExitCode
from cli.output import Output
from cli.tables import Col, FitTable
from tests.test_cli import Running, clean_env, oms, stack_env, stop_everything
from tests.test_cli_ops import Background, eventually

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (80, 200)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One stack for the module, with orders of every outcome: confirmed, out of stock, declined."""
    home = tmp_path_factory.mktemp("oms-conventions")
    env = stack_env(home)
    try:
        up = oms("up", env=env)
        assert up.returncode == 0, up.stderr
        stack = Running(env, home, up)
        for i in range(4):
            assert (
                stack.oms("order", "place", "-c", f"cust-{i % 2}", "-i", "KB-101:1", "-i", "MS-202:2").returncode == 0
            )
        assert stack.oms("order", "place", "-c", "cust-0", "-i", "LAMP-1:500").returncode == ExitCode.FAILED
        assert stack.oms("order", "place", "-c", "cust-1", "-i", "CB-505:1", "-m", "card_declined").returncode == 1
        yield stack
    finally:
        stop_everything(env)


def cli(running: Running, *args: str, columns: int = 200) -> click.testing.Result:
    """`oms ARGS` in-process, as a terminal of `columns` would run it."""
    return runner.invoke(app, list(args), env=running.env | {"COLUMNS": str(columns)}, catch_exceptions=False)


def as_json(running: Running, *args: str) -> Any:
    result = cli(running, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def whole(text: str, words: list[str]) -> None:
    """Each word appears whole in the table, and nothing was cut with an ellipsis."""
    assert "…" not in text, text
    for word in words:
        assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text), (word, text)


LISTS = [
    (("order", "list"), "orders", "order_id", "status"),
    (("saga", "list"), "sagas", "saga_id", "status"),
    (("payment", "list"), "payments", "order_id", "status"),
    (("inventory", "reservations"), "reservations", "order_id", "status"),
]


# -- 1. tables ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_no_list_cuts_an_id_or_a_status_and_each_fits_the_terminal(running: Running, columns: int):
    for command, key, ident, state in LISTS:
        items = as_json(running, *command)[key]
        assert items, command
        table = cli(running, *command, columns=columns)
        assert table.exit_code == 0, table.output
        whole(table.stdout, [item[ident] for item in items] + [item[state] for item in items])
        assert max(len(line) for line in table.stdout.splitlines()) <= columns, table.stdout
    narrow, wide = cli(running, "order", "list", columns=80).stdout, cli(running, "order", "list", columns=200).stdout
    assert "Items" not in narrow and "Items" in wide and "KB-101:1, MS-202:2" in wide  # folded or dropped, not cut
    failure = cli(running, "saga", "list", columns=80).stdout
    assert "OUT_OF_STOCK" in failure and "PAYMENT_DECLINED" in failure  # the failure column keeps its words


@pytest.mark.slow
@pytest.mark.parametrize("columns", WIDTHS)
def test_up_and_status_show_urls_and_names_whole(running: Running, columns: int):
    url = (running.home / "nats.url").read_text().strip()
    up = cli(running, "up", columns=columns)
    assert up.exit_code == 0
    whole(up.stdout, [url, "nats-server", *SERVICES])
    status = cli(running, "status", columns=columns)
    assert status.exit_code == 0
    whole(status.stdout, [url, *SERVICES, "up"])
    assert max(len(line) for line in status.stdout.splitlines()) <= columns


@pytest.mark.slow
def test_output_table_wide_json_and_jsonl_with_json_as_the_alias(running: Running):
    listed = as_json(running, "order", "list")
    assert json.loads(cli(running, "order", "list", "-o", "json").stdout) == listed
    lines = cli(running, "order", "list", "--output", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == listed["orders"]
    wide = cli(running, "order", "list", "-o", "wide", columns=80).stdout
    assert "Items" in wide and "Customer" in wide and "…" not in wide  # every column, whatever the terminal
    steps = cli(running, "saga", "show", listed["orders"][0]["order_id"], "-o", "jsonl").stdout.splitlines()
    assert [json.loads(line)["step"] for line in steps][:1] == ["reserve_stock"]


def test_a_fitted_table_folds_then_drops_and_never_cuts():
    table = FitTable([Col("Id"), Col("Status"), Col("Note", fold=True, drop=2, min_fold=12), Col("When", drop=1)])
    ident = "ord_01a23c9fdfd22cee09c3486d"
    table.add_row(
        ident, "COMPENSATING", "a long note that may fold onto more lines", ("2026-12-03 15:57:20", "15:57:20")
    )
    for width, shows in ((200, ["2026-12-03 15:57:20", "a long note"]), (72, ["15:57:20"]), (48, [])):
        console = Console(width=width, record=True, file=open(os.devnull, "w"))
        console.print(table)
        text = console.export_text()
        whole(text, [ident, "COMPENSATING", *shows])
        assert max(len(line) for line in text.splitlines()) <= width
    assert Output(True).as_json and not Output(None).as_json


# -- 2. paging and filters ------------------------------------------------------------------------------


@pytest.mark.slow
def test_all_pages_through_every_list_and_streams_jsonl(running: Running):
    for command, key, ident, _ in LISTS:
        everything = [item[ident] for item in as_json(running, *command, "--limit", "1000")[key]]
        paged = cli(running, *command, "--all", "--limit", "2", "-o", "jsonl")
        assert [json.loads(line)[ident] for line in paged.stdout.splitlines()] == everything, command
        assert [i[ident] for i in as_json(running, *command, "--all", "-n", "2")[key]] == everything
        first = cli(running, *command, "--limit", "2", columns=200).stdout
        cursor = re.search(r"--before (\S+)", first)
        assert cursor and cursor.group(1) == everything[1], first  # the caption says how to ask for the next page
        older = as_json(running, *command, "--limit", "2", "--before", everything[1])[key]
        assert [i[ident] for i in older] == everything[2:4]
        newer = as_json(running, *command, "--after", everything[2])[key]
        assert [i[ident] for i in newer] == everything[:2]


@pytest.mark.slow
def test_every_list_takes_status_since_until_and_where_it_knows_them_customers(running: Running):
    for command, key, _, _ in LISTS:
        assert as_json(running, *command, "--since", "1h")[key], command
        assert as_json(running, *command, "--until", "1h")[key] == [], command
        assert as_json(running, *command, "--since", "2000-01-01", "--until", "2000-01-02")[key] == []
        bad = cli(running, *command, "--since", "yesterday")
        assert bad.exit_code == ExitCode.USAGE and "--since" in bad.output and "not a time" in bad.output
    orders = as_json(running, "order", "list", "--customer", "cust-1", "--status", "confirmed")["orders"]
    assert orders and {(o["customer_id"], o["status"]) for o in orders} == {("cust-1", "CONFIRMED")}
    sagas = as_json(running, "saga", "list", "--customer", "cust-0", "--status", "failed")["sagas"]
    assert [s["failure_reason"] for s in sagas] == ["OUT_OF_STOCK"]
    declined = as_json(running, "payment", "list", "--status", "declined", "--customer", "cust-1")["payments"]
    assert [p["decline_reason"] for p in declined] == ["card_declined"]
    released = as_json(running, "inventory", "reservations", "--status", "released")["reservations"]
    assert len(released) == 1  # the declined order's, released by its compensation
    mine = as_json(running, "inventory", "reservations", "--order", orders[0]["order_id"])["reservations"]
    assert [r["order_id"] for r in mine] == [orders[0]["order_id"]]


# -- 3. the missing commands ----------------------------------------------------------------------------


@pytest.mark.slow
def test_saga_show_gives_each_steps_attempts_and_timings(running: Running):
    order = as_json(running, "order", "list", "--status", "confirmed", "-n", "1")["orders"][0]
    saga = as_json(running, "saga", "show", order["order_id"])
    assert [s["step"] for s in saga["steps"]] == ["reserve_stock", "authorize_payment", "confirm_order"]
    assert all(s["attempts"] == 1 and s["started_at"] and s["finished_at"] for s in saga["steps"])
    for columns in WIDTHS:
        table = cli(running, "saga", "show", saga["saga_id"], columns=columns).stdout
        whole(table, [saga["saga_id"], "reserve_stock", "authorize_payment", "SUCCEEDED", "Attempts", "Start"])
        assert re.search(r"\+\d+\.\d+ ms", table) and re.search(r"\d+\.\d+ ms", table), table
    wide = cli(running, "saga", "show", saga["saga_id"], columns=200).stdout
    assert saga["steps"][0]["started_at"][11:23] in wide  # the step's own start, to the millisecond


# -- 4, 5, 7. stats, chaos, versions ----------------------------------------------------------------------


@pytest.mark.slow
def test_status_under_chaos_shows_the_faults_in_force_and_the_contracts_version(running: Running):
    assert cli(running, "chaos", "set", "payment", "--error-rate", "1").exit_code == 0
    try:
        status = runner.invoke(app, ["status", "--json"], env=running.env)
        services = {s["name"]: s for s in json.loads(status.stdout)["services"]}
        payment = services["payment"]
        assert payment["health"] is not None and payment["health"]["chaos"]["error_rate"] == 1
        assert {s["api"] for s in services.values()} == {API_VERSION}
        for columns in WIDTHS:
            row = next(
                line for line in cli(running, "status", columns=columns).stdout.splitlines() if "payment" in line
            )
            assert "errors 100%" in row and " up " in row, row
        errors = cli(running, "status", columns=200).stdout
        assert "422:not enough LAMP-1" in errors  # the endpoint's last error, from $SRV.STATS
    finally:
        assert cli(running, "chaos", "clear").exit_code == 0


def test_version_flags_and_argument_names_read_as_the_anchors_do():
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.strip() == f"oms {__version__} (contract api {API_VERSION})"
    names = {
        ("order", "get"): "ORDER_ID",
        ("order", "cancel"): "ORDER_ID",
        ("order", "events"): "ORDER_ID",
        ("payment", "get"): "ORDER_ID",
        ("saga", "show"): "SAGA_ID",
        ("saga", "abort"): "SAGA_ID",
        ("chaos", "set"): "SERVICE",
        ("recover",): "SERVICE",
        ("logs",): "SERVICE",
        ("metrics",): "SERVICE",
        ("inventory", "restock"): "SKU",
    }
    for command, name in names.items():
        shown = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert name in shown.stdout, (command, shown.stdout)
    group = typer.main.get_command(app)
    for path in _commands(group):
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "<bool>" not in shown.stdout, (path, shown.stdout)


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.slow
def test_completion_offers_order_ids_saga_ids_skus_and_services_from_the_stack(running: Running):
    def complete(words: str) -> list[str]:
        env = running.env | {
            "_OMS_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        }
        return runner.invoke(app, [], env=env, prog_name="oms").stdout.split()

    order = as_json(running, "order", "list", "-n", "1")["orders"][0]["order_id"]
    assert order in complete(f"oms order get {order[:10]}")
    assert order in complete(f"oms payment get {order[:10]}")
    assert "saga_" + order.removeprefix("ord_") in complete("oms saga show saga_")
    assert complete("oms inventory restock LA") == ["LAMP-1"]
    assert "KB-101:" in complete("oms order place -c c1 -i K")
    assert complete("oms logs pay") == ["payment"]
    assert set(complete("oms chaos set ")) == set(SERVICES)
    running_no_more = running.env | {"OMS_NATS_URL": "nats://127.0.0.1:1"}
    env = running_no_more | {"_OMS_COMPLETE": "complete_bash", "COMP_WORDS": "oms order get o", "COMP_CWORD": "3"}
    nothing = runner.invoke(app, [], env=env, prog_name="oms")
    assert nothing.exit_code == 0 and nothing.stdout.strip() == ""  # no stack: nothing offered, no error


# -- 6. ports -------------------------------------------------------------------------------------------


def test_a_busy_nats_port_is_a_clear_error_as_a_busy_metrics_port_is(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(OMS_HOME=str(tmp_path), OMS_NATS_PORT=str(port))
        result = runner.invoke(app, ["up"], env=env)
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert f"port {port}" in result.stderr and "OMS_NATS_PORT" in result.stderr and "0 for any" in result.stderr
    assert not (tmp_path / "pids" / "nats-server.pid").exists()  # nothing was started on another port
    readme = (ROOT / "README.md").read_text()
    assert "`OMS_NATS_PORT`" in readme.split("## Configuration", 1)[1]


# -- 8. words -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_place_of_a_failed_order_prints_its_reason_and_detail(running: Running):
    for columns in WIDTHS:
        result = cli(running, "order", "place", "-c", "c-oos", "-i", "LAMP-1:50", columns=columns)
        assert result.exit_code == ExitCode.FAILED
        text = " ".join(result.stdout.split())  # one sentence, however it wrapped
        assert "failure OUT_OF_STOCK: not enough LAMP-1: requested 50, available 3" in text, result.stdout
    raw = json.loads(cli(running, "order", "place", "-c", "c-oos", "-i", "LAMP-1:50", "--json").stdout)
    assert raw["failure_reason"] == "OUT_OF_STOCK" and raw["saga"] is None  # --json stays the contract's reply


def test_a_usage_error_says_which_field_in_our_words():
    result = runner.invoke(app, ["order", "place", "-c", "c1", "-i", "KB-101:5000"], env={"COLUMNS": "200"})
    assert result.exit_code == ExitCode.USAGE
    assert "'--item': items[0].qty: at most 1000 per line" in result.output
    assert "Value error" not in result.output and "(at 0.qty)" not in result.output


# -- 9. small ones --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_load_restocks_only_when_asked_and_says_so_and_its_title_does_not_wrap(running: Running):
    before = {p["sku"]: p["on_hand"] for p in as_json(running, "inventory", "stock")["products"]}
    plain = cli(running, "load", "-n", "3", "-c", "1", "--no-audit", columns=80)
    assert plain.exit_code == 0, plain.output
    assert "ordering the stock there is (--restock tops it up first)" in plain.stderr
    title = [line for line in plain.stdout.splitlines() if line.startswith("load: ")]
    assert len(title) == 1 and re.fullmatch(r"load: 3 of 3 orders in \d+\.\ds *", title[0]), plain.stdout
    assert {p["sku"]: p["on_hand"] for p in as_json(running, "inventory", "stock")["products"]} == before
    asked = runner.invoke(app, ["load", "-n", "3", "-c", "1", "--no-audit", "--restock", "--json"], env=running.env)
    assert json.loads(asked.stdout)["restocked"] == {}  # enough of everything: nothing added
    assert json.loads(cli(running, "load", "-n", "2", "--no-audit", "--json").stdout)["restocked"] is None


@pytest.mark.slow
def test_audit_names_its_invariants_without_pointing_at_files(running: Running):
    result = cli(running, "audit", columns=200)
    assert result.exit_code == 0, result.output
    assert "Invariants" in result.stdout and "no SKU is oversold" in result.stdout
    helped = runner.invoke(app, ["audit", "--help"], env={"COLUMNS": "200"}).stdout
    assert "No SKU is oversold" in helped and "one idempotency key makes one order" in helped.lower()
    for text in (result.stdout, helped):
        assert "DESIGN" not in text and "§" not in text


@pytest.mark.slow
def test_up_foreground_streams_the_services_logs_until_ctrl_c(tmp_path: Path):
    env = stack_env(tmp_path / "home")
    attached = Background("up", "-f", env=env)
    try:
        attached.line(attached.stdout, "attached", timeout=60)
        for name in SERVICES:  # each service's own lines, as `docker compose up` shows them
            eventually(lambda name=name: _saw(attached, name), timeout=20, what=f"a log line of {name}")
        attached.proc.send_signal(signal.SIGINT)
        assert attached.finish(timeout=30) == 0
    finally:
        attached.kill()
        stop_everything(env)
    assert not (tmp_path / "home" / "pids" / "orders.pid").exists()


def _saw(attached: Background, name: str) -> bool:
    seen = getattr(attached, "seen", [])
    while not attached.stdout.empty():
        seen.append(attached.stdout.get())
    attached.seen = seen  # type: ignore[attr-defined]
    return any(re.search(rf"\d\d:\d\d:\d\d\.\d+ {name}\s", Text.from_ansi(line).plain) for line in seen)


# -- 10. the environment ----------------------------------------------------------------------------------


def test_every_test_runs_without_the_users_oms_settings():
    assert [name for name in os.environ if name.startswith("OMS_")] == []
    settings = Settings()
    assert settings.metrics_port("orders") == 9101 and settings.home == Path(".oms")
    assert settings.nats_url is None and auth.login(settings, "cli").nats_password is None
