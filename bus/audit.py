"""The invariant audit: reads all three services and the event stream, checks DESIGN section 4."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from bus import subjects as s
from bus.client import Client
from bus.errors import Unavailable
from bus.holdings import SHIPPED, holds_what_it_should
from bus.ids import parse_iso
from bus.settings import SagaSettings

MAX_LISTED = 20
READS_AT_ONCE = 32  # subjects whose messages are read at the same time (invariant 6's duplicates)
# Event types a key (an order) has at most one of, by construction of the stores: two on one subject are
# a duplicate even with different event ids. Types a key may have several of (restocks of a SKU, retries,
# compensations, breaker changes, refunds once they are partial) are compared by event id only.
ONCE_PER_KEY = frozenset(
    {
        "order_created",
        "order_confirmed",
        "order_failed",
        "order_cancelled",
        "stock_reserved",
        "stock_released",
        "payment_authorized",
        "payment_declined",
        "payment_voided",
        "order_shipped",
    }
)


# Payments that hold the customer's money, or a hold on it (a partly refunded one still holds the rest).
CHARGED = frozenset({"AUTHORIZED", "CAPTURED", "PARTIALLY_REFUNDED"})


def _authorized_once(p: dict[str, Any]) -> bool:
    """Whether the payment was authorized (has its payment_authorized event): all but declined payments and
    tombstones (VOIDED rows of nothing, made by a void or a capture's reversal that came first)."""
    return p["status"] != "DECLINED" and p.get("decline_reason") is None and p.get("customer_id") is not None


def _payment_events(p: dict[str, Any]) -> list[str]:
    """The events a payment in its state must have in the stream."""
    if p["status"] == "DECLINED":
        return ["payment_declined"]
    if p["status"] == "VOIDED":
        return ["payment_voided"]
    kinds = ["payment_authorized"]
    if p.get("captured_cents"):
        kinds.append("payment_captured")
    if p["status"] == "REFUNDED" or p.get("refunded_cents"):  # (REFUNDED with nothing captured: a void before)
        kinds.append("payment_refunded")
    return kinds


# An order still under way, and the saga of `orders.get` that must end it by its deadline.
UNDER_WAY = {"PENDING": "saga", "COMPENSATING": "saga", "SHIPPING": "ship_saga"}


@dataclass
class Check:
    number: int
    name: str
    checked: int = 0
    violations: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.violations.append(what)

    def to_dict(self) -> dict[str, Any]:
        return {
            "invariant": self.number,
            "name": self.name,
            "checked": self.checked,
            "violations": len(self.violations),
            "offending": self.violations[:MAX_LISTED],
        }


@dataclass
class Report:
    checks: list[Check]
    orders: int
    events: int

    @property
    def ok(self) -> bool:
        return not any(check.violations for check in self.checks)

    @property
    def violations(self) -> int:
        return sum(len(check.violations) for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": self.violations,
            "orders": self.orders,
            "events": self.events,
            "checks": [check.to_dict() for check in self.checks],
        }


async def _pages(
    client: Client, route: s.Route, body: dict[str, Any], key: str, cursor: str, id_of: Callable[[dict], str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    page: dict[str, Any] = dict(body)
    while True:
        result = await client.call(route, page, timeout_s=10)
        batch = result[key]
        rows.extend(batch)
        if len(batch) < page["limit"]:
            return rows
        page[cursor] = id_of(batch[-1])


async def stream_subjects(js: JetStreamContext, stream: str, timeout_s: float = 10.0) -> Counter[str]:
    """How many messages the stream holds on each subject, as the server counts them.

    The server answers a subject count in pages (at most 100,000 subjects each); nats-py's `stream_info`
    reads only the first, so the pages are asked for here. Reading every message instead took about
    30 s per 360,000 events and, cut short by a deadline, reported the rest as missing."""
    prefix = getattr(js, "_prefix", "$JS.API")  # nats-py keeps the API prefix (domains) on the context
    seen: Counter[str] = Counter()
    while True:
        body = {"subjects_filter": "events.>", "offset": len(seen)}
        reply = await js._nc.request(f"{prefix}.STREAM.INFO.{stream}", json.dumps(body).encode(), timeout=timeout_s)
        info = json.loads(reply.data)
        if "error" in info:
            raise Unavailable(f"stream {stream}: {info['error'].get('description', info['error'])}")
        page = (info.get("state") or {}).get("subjects") or {}
        seen.update(page)
        if not page or len(seen) >= int(info.get("total") or 0):
            return seen


async def repeated_events(js: JetStreamContext, stream: str, counts: Counter[str]) -> list[str]:
    """What the stream holds twice: an event id stored more than once on a subject, or a second event of a
    type a key has one of. Only subjects with more than one message can (`counts`: `stream_subjects`), so
    only theirs are read, one request per message."""
    slots = asyncio.Semaphore(READS_AT_ONCE)

    async def stored_on(subject: str) -> list[tuple[str | None, int]]:
        found: list[tuple[str | None, int]] = []
        seq = 1
        async with slots:
            for _ in range(counts[subject]):
                try:
                    msg = await js.get_msg(stream, seq, subject=subject, next=True)
                except NotFoundError:  # removed meanwhile (max age)
                    break
                found.append((_event_id(msg), msg.seq or seq))
                seq = (msg.seq or seq) + 1
        return found

    suspects = [subject for subject, n in counts.items() if n > 1]
    read = await asyncio.gather(*(stored_on(subject) for subject in suspects))
    return [finding for subject, found in zip(suspects, read, strict=True) for finding in _twice(subject, found)]


def _event_id(msg: Msg) -> str | None:
    """The event id in the body; the Nats-Msg-Id its relay published it with, when the body has none."""
    try:
        event_id = json.loads(msg.data or b"{}").get("event_id")
    except (ValueError, AttributeError):
        event_id = None
    return event_id if isinstance(event_id, str) else (msg.headers or {}).get(js_api.Header.MSG_ID)


def _twice(subject: str, found: list[tuple[str | None, int]]) -> list[str]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for event_id, seq in found:
        if event_id is not None:
            seqs[event_id].append(seq)
    findings = [
        f"{subject}: event {event_id} stored {len(at)} times (stream sequences {', '.join(map(str, at))})"
        for event_id, at in seqs.items()
        if len(at) > 1
    ]
    kind = subject.split(".")[2] if subject.count(".") >= 3 else ""
    if kind in ONCE_PER_KEY and len(seqs) > 1:
        findings.append(f"{subject}: {len(seqs)} different {kind} events, one expected")
    return findings


async def _last_restocked_units(js: JetStreamContext, stream: str, sku: str) -> int | None:
    """Every unit of `sku` restocked, as its last restock event says (on_hand, for an event from before
    fulfilment: until then on_hand moved by restocks alone)."""
    try:
        msg = await js.get_last_msg(stream, s.event_subject("inventory", "stock_restocked", sku))
    except NotFoundError:
        return None
    data = json.loads(msg.data or b"{}").get("data", {})
    units = data.get("restocked_units", data.get("on_hand"))
    return units if isinstance(units, int) else None


async def run_audit(client: Client, js: JetStreamContext, stream: str, saga: SagaSettings) -> Report:
    orders, products, reservations, payments, events = await asyncio.gather(
        _pages(client, s.ORDERS_LIST, {"limit": 1000}, "orders", "before", lambda o: o["order_id"]),
        client.call(s.INVENTORY_STOCK, {}, timeout_s=10),
        _pages(client, s.INVENTORY_RESERVATIONS, {"limit": 1000}, "reservations", "after", lambda r: r["order_id"]),
        _pages(client, s.PAYMENT_LIST, {"limit": 1000}, "payments", "after", lambda p: p["order_id"]),
        stream_subjects(js, stream),
    )
    by_order = {o["order_id"]: o for o in orders}
    active = {r["order_id"]: r for r in reservations if r["status"] == "ACTIVE"}
    pay = {p["order_id"]: p for p in payments}
    charged = {oid for oid, p in pay.items() if p["status"] in CHARGED}

    # 1. no SKU is oversold; on_hand moves only by restocks, commits and resellable returns
    oversold = Check(1, "no SKU is oversold; on_hand moves only by restocks, commits and returns")
    held: Counter[str] = Counter()
    for r in active.values():
        for line in r["items"]:
            held[line["sku"]] += line["qty"]
    shipped_units: Counter[str] = Counter()  # units of committed reservations, less the ones put back
    for r in reservations:
        if r["status"] == "COMMITTED":
            for line in r["items"]:
                shipped_units[line["sku"]] += line["qty"] - line.get("restocked_qty", 0)
    for p in products["products"]:
        sku = p["sku"]
        oversold.checked += 1
        if p["reserved"] != held[sku]:
            oversold.fail(f"{sku}: reserved {p['reserved']} but active reservations hold {held[sku]}")
        if p["available"] != p["on_hand"] - p["reserved"] or p["available"] < 0:
            oversold.fail(f"{sku}: on_hand {p['on_hand']} reserved {p['reserved']} available {p['available']}")
        # Each restock event carries every unit restocked so far (on_hand, before fulfilment): less what
        # committed reservations took and returns did not put back, that is on_hand (a SKU without a restock
        # is invariant 6's business).
        restocked = await _last_restocked_units(js, stream, sku)
        if restocked is not None and restocked - shipped_units[sku] != p["on_hand"]:
            oversold.fail(
                f"{sku}: on_hand {p['on_hand']}, but {restocked} restocked less {shipped_units[sku]} shipped and"
                f" not put back is {restocked - shipped_units[sku]}"
            )

    # 2. a CONFIRMED order holds its reservation and its authorization; a shipped one its committed
    # reservation and its capture, and what it refunded is what its returns are worth
    confirmed = Check(2, "confirmed and shipped orders are reserved and charged exactly")
    # 3. FAILED and CANCELLED orders hold nothing
    settled = Check(3, "failed and cancelled orders hold nothing and owe nothing")
    reservation_of = {r["order_id"]: r for r in reservations}
    for o in orders:
        oid, status = o["order_id"], o["status"]
        if status in ("CONFIRMED", "SHIPPING", *SHIPPED):
            confirmed.checked += 1
            for finding in await holds_what_it_should(client, o, reservation_of.get(oid), pay.get(oid)):
                confirmed.fail(f"{oid}: {finding}")
        elif status in ("FAILED", "CANCELLED"):
            settled.checked += 1
            r, p = reservation_of.get(oid), pay.get(oid)
            if r is not None and r["status"] in ("ACTIVE", "COMMITTED"):
                settled.fail(f"{oid}: {status} but still holds a reservation ({r['status']})")
            if oid in charged or (p is not None and p.get("captured_cents", 0) > p.get("refunded_cents", 0)):
                settled.fail(f"{oid}: {status} but still charged ({p['status'] if p else ''})")

    # 4. nothing stays PENDING or COMPENSATING past its deadline plus the retry cap, nor SHIPPING past its
    # shipment's: every order is checked, those still under way by their saga
    quiet = Check(4, "no order outlives its deadline")
    grace = (saga.retry_max_interval_ms + saga.step_timeout_ms) / 1000
    now = time.time()
    quiet.checked = len(orders)
    for o in orders:
        if (which := UNDER_WAY.get(o["status"])) is not None:
            full = await client.call(s.ORDERS_GET, {"order_id": o["order_id"]}, timeout_s=10)
            saga_view = full.get(which) or {}
            deadline = saga_view.get("deadline_at")
            if not deadline:  # nothing drives it, so nothing will ever end it
                quiet.fail(f"{o['order_id']}: {o['status']} without a saga to finish it")
            elif now > parse_iso(deadline) + grace:
                quiet.fail(f"{o['order_id']}: {o['status']} past its deadline {deadline}")

    # 5. one idempotency key, one order; every charge and reservation belongs to an order
    once = Check(5, "one key, one order, at most one charge")
    keys = Counter(o["idempotency_key"] for o in orders if o.get("idempotency_key"))
    once.checked = len(orders)
    for key, n in keys.items():
        if n > 1:
            once.fail(f"key {key}: {n} orders")
    for oid in charged | {p["order_id"] for p in payments if _authorized_once(p)}:
        if oid not in by_order:
            once.fail(f"{oid}: payment without an order")
    for oid in active:
        if oid not in by_order:
            once.fail(f"{oid}: reservation without an order")

    # 6. every state change has its event, once, and no event lacks its state
    evented = Check(6, "every state change has its event, exactly once")
    expected: list[str] = []
    for o in orders:
        expected.append(s.event_subject("orders", "order_created", o["order_id"]))
        final = {"CONFIRMED": "order_confirmed", "FAILED": "order_failed", "CANCELLED": "order_cancelled"}
        if o["status"] in final:
            expected.append(s.event_subject("orders", final[o["status"]], o["order_id"]))
        if o["status"] in SHIPPED:  # confirmed first, then shipped, and returned (in part) by its refunds
            kinds = ["order_confirmed", "order_shipped"] + (["order_returned"] if o.get("refunded_cents") else [])
            expected += [s.event_subject("orders", kind, o["order_id"]) for kind in kinds]
    for r in reservations:
        if r["items"]:
            expected.append(s.event_subject("inventory", "stock_reserved", r["order_id"]))
        if r["status"] == "RELEASED":
            expected.append(s.event_subject("inventory", "stock_released", r["order_id"]))
        if r["status"] == "COMMITTED":
            expected.append(s.event_subject("inventory", "stock_committed", r["order_id"]))
        if any(line.get("returned_qty") for line in r["items"]):
            expected.append(s.event_subject("inventory", "stock_returned", r["order_id"]))
    for p in payments:
        expected += [s.event_subject("payment", t, p["order_id"]) for t in _payment_events(p)]
    for p in products["products"]:
        expected.append(s.event_subject("inventory", "stock_restocked", p["sku"]))
    evented.checked = len(expected)
    for subject in expected:
        if not events.get(subject):
            evented.fail(f"missing {subject}")
    reserved_ids = {r["order_id"] for r in reservations if r["items"]}
    for subject in events:
        _, _service, kind, key = subject.split(".", 3)
        if kind == "stock_reserved" and key not in reserved_ids:
            evented.fail(f"{subject} but inventory has no such reservation")
        elif kind == "payment_authorized" and not (key in pay and _authorized_once(pay[key])):
            evented.fail(f"{subject} but payment has no such authorization")
        elif kind == "order_created" and key not in by_order:
            evented.fail(f"{subject} but orders has no such order")
    for finding in await repeated_events(js, stream, events):
        evented.fail(finding)

    return Report(
        checks=[oversold, confirmed, settled, quiet, once, evented],
        orders=len(orders),
        events=sum(events.values()),
    )


def summary(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)
