"""Everything under OMS_HOME is its owner's alone: folders 0700, files 0600, whoever made them."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import pytest

from bus import subjects as s
from bus.app import running
from bus.client import Client
from bus.replay import rebuild
from bus.settings import Settings
from inventory_svc.service import SPEC as INVENTORY
from order_svc.service import SPEC as ORDERS
from payment_svc.service import SPEC as PAYMENT
from tests.test_cli import oms, stack_env, stop_everything


def not_private(home: Path) -> list[str]:
    """Every folder under `home` (itself included) that is not 0700 and every file that is not 0600."""
    found = []
    entries = [home]
    for folder, dirs, files in os.walk(home):
        entries += [Path(folder) / name for name in (*dirs, *files)]
    for entry in entries:
        mode = entry.lstat().st_mode
        wanted = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != wanted:
            found.append(f"{oct(stat.S_IMODE(mode))} {entry.relative_to(home.parent)}")
    return found


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


async def test_services_run_inside_a_program_with_a_lax_umask_keep_their_files_private(settings: Settings):
    # The services' own processes run with umask 077; in a test or a benchmark they run under the caller's.
    nc = await nats.connect(settings.nats_url)
    try:
        with umask(0o022):
            async with AsyncExitStack() as stack:
                for spec in (INVENTORY, PAYMENT, ORDERS):
                    await stack.enter_async_context(running(spec, settings, serve_metrics=False))
                body = {"customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}]}
                assert (await Client(nc, timeout_s=15).call(s.ORDERS_PLACE, body))["status"] == "CONFIRMED"
                made = {p.name for p in settings.db_path("orders").parent.iterdir()}
                assert made >= {"orders.db", "orders.db-wal", "orders.db-shm", "orders.db.lock"}
                assert not_private(settings.home) == []
            await rebuild(settings, PAYMENT, nc.jetstream())  # a rebuild by replay makes a new file and swaps it in
        assert not_private(settings.home) == []
    finally:
        await nc.close()


@pytest.mark.slow
def test_a_stack_started_by_oms_up_keeps_everything_under_its_home_private(tmp_path: Path):
    home = tmp_path / "home"
    # A home as an older OMS left it: open to every local user.
    (home / "logs").mkdir(parents=True)
    (home / "data").mkdir()
    os.chmod(home, 0o755)
    os.chmod(home / "data", 0o755)
    (home / "logs" / "orders.log").write_text("an older run\n")
    os.chmod(home / "logs" / "orders.log", 0o644)
    env = stack_env(home)
    try:
        with umask(0o022):  # what `oms` inherits here: files 0644 unless OMS asks otherwise
            up = oms("up", env=env)
            assert up.returncode == 0, up.stderr
            placed = oms("order", "place", "-c", "c1", "-i", "KB-101:1", "--json", env=env)
            assert json.loads(placed.stdout)["status"] == "CONFIRMED", placed.stderr
            assert (home / "data" / "orders.db-wal").exists() and (home / "nats" / "jetstream").is_dir()
            assert not_private(home) == []  # while it runs: databases with their WAL, SHM and locks, the store
            assert oms("down", env=env).returncode == 0
            recovered = oms("recover", "payment", "--json", env=env)  # starts nats-server for the rebuild
            assert recovered.returncode == 0, recovered.stderr
        assert not_private(home) == []
    finally:
        stop_everything(env)
