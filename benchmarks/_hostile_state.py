"""The state `hostile.py` compares, before and after: what every service holds, the stream, and what
the services themselves counted (micro stats, Prometheus metrics)."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bus import subjects as s
from bus.audit import stream_subjects
from bus.client import Client
from bus.settings import SERVICES, Settings

MAX_LISTED = 30


async def _pages(client: Client, route: s.Route, key: str, cursor: str) -> list[dict]:
    rows: list[dict] = []
    page: dict[str, Any] = {"limit": 1000}
    while True:
        batch = (await client.call(route, page, timeout_s=10))[key]
        rows.extend(batch)
        if len(batch) < 1000:
            return rows
        page[cursor] = batch[-1]["order_id"]


async def snapshot(client: Client, js: Any, stream: str) -> dict[str, Any]:
    """Everything a hostile message could change."""
    info = await js.stream_info(stream)
    return {
        "stock": {p["sku"]: p for p in (await client.call(s.INVENTORY_STOCK, {}, timeout_s=10))["products"]},
        "reservations": {
            r["order_id"]: r for r in await _pages(client, s.INVENTORY_RESERVATIONS, "reservations", "after")
        },
        "payments": {p["order_id"]: p for p in await _pages(client, s.PAYMENT_LIST, "payments", "after")},
        "orders": {o["order_id"]: o for o in await _pages(client, s.ORDERS_LIST, "orders", "before")},
        "sagas": {v["saga_id"]: v for v in (await client.call(s.SAGA_LIST, {"limit": 1000}, timeout_s=10))["sagas"]},
        "chaos": {name: await client.request(s.chaos_subject(name, "get"), b"", timeout_s=10) for name in SERVICES},
        "stream": {
            "messages": info.state.messages,
            "first_seq": info.state.first_seq,
            "last_seq": info.state.last_seq,
            "consumers": info.state.consumer_count,
        },
        "subjects": dict(await stream_subjects(js, stream)),
    }


def compare(before: dict[str, Any], after: dict[str, Any], placed: list[dict]) -> dict[str, list[str]]:
    """Every way `after` differs from `before` plus the effects of the valid orders `placed`, by section
    (an empty list: exactly as expected)."""
    new = {p["order"]["order_id"]: p for p in placed}
    found: dict[str, list[str]] = {}

    def kept(section: str, extra: dict[str, Any]) -> list[str]:
        """Rows of `before` unchanged, and no rows beyond them but `extra` (id -> check of the new row)."""
        out = []
        for key, row in before[section].items():
            if after[section].get(key) != row:
                out.append(f"{key} changed: {row} -> {after[section].get(key)}")
        for key, row in after[section].items():
            if key in before[section]:
                continue
            if key not in extra:
                out.append(f"{key} is new: {row}")
            elif problem := extra[key](row):
                out.append(f"{key}: {problem}")
        out += [f"{key} missing" for key in extra if key not in after[section]]
        return out[:MAX_LISTED]

    def lines(items: list[dict]) -> dict[str, int]:
        return {line["sku"]: line["qty"] for line in items}

    def order_ok(p: dict):
        want = p["body"]
        return lambda o: None if (
            o["status"] == "CONFIRMED" and o["customer_id"] == want["customer_id"]
            and lines(o["items"]) == lines(want["items"]) and o["idempotency_key"] == p["key"]
        ) else f"not the order placed: {o}"  # fmt: skip

    def reservation_ok(p: dict):
        return lambda r: None if r["status"] == "ACTIVE" and lines(r["items"]) == lines(p["body"]["items"]) else str(r)

    def payment_ok(p: dict):
        total = p["order"]["total_cents"]
        return lambda pay: None if pay["status"] == "AUTHORIZED" and pay["amount_cents"] == total else str(pay)

    found["orders"] = kept("orders", {oid: order_ok(p) for oid, p in new.items()})
    found["reservations"] = kept("reservations", {oid: reservation_ok(p) for oid, p in new.items()})
    found["payments"] = kept("payments", {oid: payment_ok(p) for oid, p in new.items()})
    sagas = {"saga_" + oid.removeprefix("ord_"): oid for oid in new}
    found["sagas"] = kept("sagas", {sid: lambda v: None if v["status"] == "COMPLETED" else str(v) for sid in sagas})
    found["chaos"] = [f"{name}: {before['chaos'][name]} -> {after['chaos'][name]}"
                      for name in SERVICES if before["chaos"][name] != after["chaos"][name]]  # fmt: skip

    held: Counter[str] = Counter()
    for p in placed:
        held.update(lines(p["body"]["items"]))
    stock = []
    for sku, row in before["stock"].items():
        want = {**row, "reserved": row["reserved"] + held[sku], "available": row["available"] - held[sku]}
        if after["stock"].get(sku) != want:
            stock.append(f"{sku}: expected {want}, found {after['stock'].get(sku)}")
    stock += [f"{sku} is new" for sku in after["stock"] if sku not in before["stock"]]
    found["stock"] = stock

    events = 4 * len(placed)  # a confirmed order: created, reserved, authorized, confirmed
    have_stream = {k: v for k, v in after["stream"].items() if k != "consumers"}  # checked on their own
    want_stream = {"messages": before["stream"]["messages"] + events, "first_seq": before["stream"]["first_seq"],
                   "last_seq": before["stream"]["last_seq"] + events}  # fmt: skip
    found["stream"] = [] if have_stream == want_stream else [f"expected {want_stream}, found {have_stream}"]
    subjects = Counter(before["subjects"])
    for oid in new:
        for subject in ("orders.order_created", "inventory.stock_reserved", "payment.payment_authorized",
                        "orders.order_confirmed"):  # fmt: skip
            subjects[f"events.{subject}.{oid}"] += 1
    have = Counter(after["subjects"])
    found["stream_subjects"] = [
        f"{subject}: expected {subjects[subject]}, found {have[subject]}"
        for subject in sorted(set(subjects) | set(have))
        if subjects[subject] != have[subject]
    ][:MAX_LISTED]
    return found


async def service_stats(nc: Any) -> dict[str, dict[str, Any]]:
    """`$SRV.STATS.<service>`: per endpoint, requests and errors by code, as each service counted them."""
    found = {}
    for name in SERVICES:
        stats = json.loads((await nc.request(f"$SRV.STATS.{name}", b"", timeout=10)).data)
        found[name] = {
            e["subject"]: {
                "requests": e["num_requests"],
                "errors": e["num_errors"],
                "by_code": (e.get("data") or {}).get("errors_by_code", {}),
            }
            for e in stats["endpoints"]
        }
    return found


def scrape(settings: Settings) -> dict[str, dict[str, dict[str, float]]]:
    """From each service's /metrics: requests by outcome code, and NATS messages dropped, by reason."""
    found = {}
    for name in SERVICES:
        url = f"http://{settings.metrics_host}:{settings.metrics_port(name)}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        outcomes: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "oms_requests_total":
                    outcomes[sample.labels["outcome"]] += sample.value
                elif sample.name == "oms_nats_messages_dropped_total":
                    dropped[sample.labels["reason"]] += sample.value
        found[name] = {"outcomes": dict(outcomes), "dropped": dict(dropped)}
    return found


def delta(before: dict[str, dict[str, dict[str, float]]], after: dict[str, dict[str, dict[str, float]]]) -> dict:
    """`after - before` of two scrapes, per service and counter, leaving out zeros."""
    return {
        name: {
            part: {k: v - before[name][part].get(k, 0) for k, v in counts.items() if v - before[name][part].get(k, 0)}
            for part, counts in after[name].items()
        }
        for name in after
    }


def stats_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Requests each service took during the run, in all and by error code (micro's own counts: they
    include requests whose answer went somewhere else than the sender, a reply subject aimed away)."""
    found: dict[str, Any] = {}
    for name, endpoints in after.items():
        requests, codes = 0, Counter()
        for subject, now in endpoints.items():
            then = before[name].get(subject, {"requests": 0, "by_code": {}})
            requests += now["requests"] - then["requests"]
            codes.update({code: n - then["by_code"].get(code, 0) for code, n in now["by_code"].items()})
        found[name] = {"requests": requests, "errors_by_code": {k: v for k, v in codes.items() if v}}
    return found
