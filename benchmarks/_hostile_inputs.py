"""What `hostile.py` sends: hostile messages for every subject a client can name, as `cli` and as `admin`.

Everything here is a pure function of a `random.Random`: the same seed gives the same messages. Values
only known once the stack runs (the seed orders' ids, another connection's inbox) are placeholders that
the sender fills in (`@ORDER@`, `@SAGA@`, `@OTHER_INBOX@`, `@OWN_INBOX@`), so the plan's digest is the
same from run to run.

The one rule: a body sent to a mutating endpoint never validates on its own. Where it does (the
bad-key kind, whose point is a valid command refused for its key), the header alone must stop it, so a
hole in the service's checks shows up as a change of state.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from bus import contract as c
from bus import subjects as s
from bus.accounts import JS_PREFIX, JSZ_SUBJECT, permissions
from bus.client import IDEMPOTENCY_HEADER
from bus.settings import SERVICES, Limits

USERS = ("cli", "admin")
STREAM = "OMS_EVENTS"
SKUS = ("KB-101", "MS-202", "CB-505")
ORDER, SAGA, OTHER_INBOX, OWN_INBOX = "@ORDER@", "@SAGA@", "@OTHER_INBOX@", "@OWN_INBOX@"
MAX_BODY = 1_000_000  # under nats-server's max_payload (1 MiB) with room for the headers


@dataclass(frozen=True)
class Endpoint:
    """An OMS endpoint (a route or a chaos verb): its subject, request model and a valid body."""

    subject: str
    model: type[BaseModel]
    mutating: bool
    valid: dict


def _line(qty: int = 1) -> list[dict]:
    return [{"sku": "KB-101", "qty": qty}]


# A valid body per route, naming a seed order where the route takes one: a body that slipped through
# validation would then act on real state (cancel, release, refund it), and the comparison would see it.
VALID: dict[str, dict] = {
    s.ORDERS_PLACE.subject: {"customer_id": "hostile-1", "items": _line(), "wait_ms": 0},
    s.ORDERS_GET.subject: {"order_id": ORDER},
    s.ORDERS_LIST.subject: {"limit": 3},
    s.ORDERS_CANCEL.subject: {"order_id": ORDER, "reason": "hostile"},
    s.ORDERS_EVENTS.subject: {"order_id": ORDER},
    s.ORDERS_SHIP.subject: {"order_id": ORDER, "wait_ms": 0},
    s.ORDERS_RETURN.subject: {"order_id": ORDER, "items": _line(), "reason": "hostile", "wait_ms": 0},
    s.SAGA_LIST.subject: {"limit": 3},
    s.SAGA_GET.subject: {"saga_id": SAGA},
    s.SAGA_RETRY.subject: {"saga_id": SAGA},
    s.SAGA_ABORT.subject: {"saga_id": SAGA, "reason": "hostile"},
    s.INVENTORY_CHECK.subject: {"items": _line()},
    s.INVENTORY_RESERVE.subject: {"order_id": ORDER, "items": _line()},
    s.INVENTORY_RELEASE.subject: {"order_id": ORDER},
    s.INVENTORY_STOCK.subject: {},
    s.INVENTORY_RESTOCK.subject: {"sku": "KB-101", "qty": 5},
    s.INVENTORY_RESERVATIONS.subject: {"limit": 3},
    s.INVENTORY_PRODUCT.subject: {"sku": "KB-101", "resellable": True},
    s.INVENTORY_COMMIT.subject: {"order_id": ORDER, "commit_id": "hostile-commit"},
    s.INVENTORY_UNCOMMIT.subject: {"order_id": ORDER, "commit_id": "hostile-commit"},
    s.INVENTORY_RECEIVE_RETURN.subject: {"order_id": ORDER, "return_id": "hostile-return", "items": _line()},
    s.PAYMENT_AUTHORIZE.subject: {
        "order_id": ORDER,
        "customer_id": "hostile-1",
        "amount_cents": 8900,
        "currency": "USD",
        "method": "card",
    },
    s.PAYMENT_CAPTURE.subject: {"order_id": ORDER, "capture_id": "hostile-capture"},
    s.PAYMENT_REVERSE_CAPTURE.subject: {"order_id": ORDER, "capture_id": "hostile-capture"},
    s.PAYMENT_REFUND.subject: {"order_id": ORDER},
    s.PAYMENT_VOID.subject: {"order_id": ORDER},
    s.PAYMENT_GET.subject: {"order_id": ORDER},
    s.PAYMENT_LIST.subject: {"limit": 3},
    **{s.HEALTH[name].subject: {} for name in SERVICES},
}
CHAOS_VALID = {"set": {"error_rate": 0.5, "latency_ms": 100}, "get": {}, "clear": {}}


def endpoints() -> list[Endpoint]:
    found = [Endpoint(r.subject, r.request, r.mutating, VALID[r.subject]) for r in s.ROUTES]
    models = {"set": c.ChaosSet, "get": c.ChaosQuery, "clear": c.ChaosQuery}
    for name in SERVICES:
        for verb, model in models.items():
            found.append(Endpoint(s.chaos_subject(name, verb), model, verb != "get", CHAOS_VALID[verb]))
    return found


ENDPOINTS = endpoints()
assert set(VALID) == {r.subject for r in s.ROUTES}, "every route needs a valid body in VALID"
SRV = [
    f"$SRV.{verb}{suffix}"
    for verb in ("PING", "INFO", "STATS")
    for suffix in ("", *(f".{name}" for name in SERVICES), ".nosuch", ".orders.not-an-id")
]
JS_REACHABLE = {  # the stream's API as each user may reach it (bus.accounts.exports)
    "cli": [f"{JS_PREFIX}.STREAM.INFO.{STREAM}"],
    "admin": [
        f"{JS_PREFIX}.STREAM.INFO.{STREAM}",
        f"{JS_PREFIX}.STREAM.MSG.GET.{STREAM}",
        f"{JS_PREFIX}.DIRECT.GET.{STREAM}",
        f"{JS_PREFIX}.DIRECT.GET.{STREAM}.events.orders.order_created.{ORDER}",
        f"{JS_PREFIX}.CONSUMER.CREATE.{STREAM}",
        f"{JS_PREFIX}.CONSUMER.CREATE.{STREAM}.hostile.events.>",
        f"{JS_PREFIX}.CONSUMER.INFO.{STREAM}.hostile",
        f"{JS_PREFIX}.CONSUMER.DELETE.{STREAM}.hostile",
        f"{JS_PREFIX}.CONSUMER.MSG.NEXT.{STREAM}.hostile",
        JSZ_SUBJECT,
    ],
}
# What must be out of everyone's reach: the stream's write and admin API, in both spellings.
JS_FORBIDDEN = [
    *(
        f"{prefix}.{call}.{STREAM}"
        for prefix in ("$JS.API", JS_PREFIX)
        for call in ("STREAM.PURGE", "STREAM.DELETE", "STREAM.UPDATE", "STREAM.MSG.DELETE", "CONSUMER.LIST")
    ),
    "$JS.API.STREAM.CREATE.HOSTILE",
    f"{JS_PREFIX}.STREAM.CREATE.HOSTILE",
    "$JS.API.INFO",
    f"$JS.API.CONSUMER.CREATE.{STREAM}",
    f"$JS.ACK.{STREAM}.hostile.1.1.1.1700000000000000000.0",
    "$SYS.REQ.SERVER.PING.JSZ",
    "$SYS.REQ.ACCOUNT.OMS.CONNZ",
]
EVENT_TYPES = {
    "orders": ("order_created", "order_confirmed", "order_failed"),
    "inventory": ("stock_reserved", "stock_released", "stock_restocked"),
    "payment": ("payment_authorized", "payment_refunded"),
}
EVENTS = [f"events.{svc}.{kind}.{ORDER}" for svc, kinds in EVENT_TYPES.items() for kind in kinds] + [
    "events.inventory.stock_restocked.KB-101",
    "events.hostile",
    "events.orders",
]


def allowed(user: str, subject: str) -> bool:
    """Whether nats-server lets `user` publish to `subject` (admin: anything in its account)."""
    patterns = permissions(user).publish
    return patterns is None or any(_matches(p, subject) for p in patterns)


# Reply subjects the server keeps for itself: a client naming one is refused (as a permissions violation).
RESERVED_REPLIES = ("_R_.", "$JS.ACK.")
TRACE_DEST = "Nats-Trace-Dest"


def refused(user: str, subject: str, reply: str | None, headers: dict[str, str] | None) -> bool:
    """Whether nats-server refuses the message (one -ERR): a subject the user may not publish to, a reply
    subject it keeps for itself, or a trace destination the user may not publish to (message tracing)."""
    trace = (headers or {}).get(TRACE_DEST)
    return (
        not allowed(user, subject)
        or (reply or "").startswith(RESERVED_REPLIES)
        or (trace is not None and not allowed(user, trace))
    )


def _matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def is_valid(endpoint: Endpoint, body: bytes, limits: Limits) -> bool:
    """Whether the service takes `body` as a valid request (its own checks, run here), its placeholders
    filled in as the sender will (any id of the right shape does)."""
    if len(body) > limits.max_payload_bytes:
        return False
    body = body.replace(ORDER.encode(), b"ord_hostile").replace(SAGA.encode(), b"saga_hostile")
    try:
        endpoint.model.model_validate_json(body.strip() or b"{}", context={"limits": limits})
    except (ValidationError, ValueError, RecursionError):
        return False
    return True


def spoiled(endpoint: Endpoint, body: bytes, limits: Limits) -> bytes:
    """`body`, made invalid if it would be a valid command on a mutating endpoint (a field nobody knows)."""
    if endpoint.mutating and is_valid(endpoint, body, limits):
        return b'{"hostile_unknown_field": 1, ' + body.lstrip()[1:] if body.strip().startswith(b"{") else b"[]"
    return body


# -- bodies ---------------------------------------------------------------------------------------------

HUGE_NUMBERS = [
    "9" * 20,
    "-" + "9" * 20,
    str(2**63),
    str(-(2**63) - 1),
    str(2**64),
    "9" * 4300,  # past Python's int digit limit
    "1" + "0" * 400,
    "1e400",
    "-1e400",
    "1e308",
    "4.9e-324",
    "-0",
    "-0.0",
    "1.0",
    "1.0000000000000001",
    "NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "0x10",
    "1_000",
    "+1",
    ".5",
    "01",
]
WRONG_TYPES = ['"1"', '"KB-101"', "1", "1.5", "true", "null", "[]", "{}", '["a"]', '{"a": 1}', '""', '"\\u0000"']
ODD_STRINGS = [
    '"\\ud800"',  # a lone surrogate, as a JSON escape
    '"KB-101\\u0000"',
    '"\\u202eKB-101"',  # right-to-left override
    '"\\uff2b\\uff22-101"',  # full-width letters
    '"KB\\u200b-101"',  # zero-width space
    json.dumps("x" * 5000),
    json.dumps("../" * 50),
    '"ord_\' OR 1=1 --"',
    '"%s%s%s%n"',
]
GARBAGE = [
    b"",
    b" ",
    b"{",
    b"}",
    b"}{",
    b"[",
    b"[1,2",
    b'{"a":}',
    b'{"a" 1}',
    b"{'a': 1}",
    b'{"a": 1,}',
    b'{"a": 1} trailing',
    b"\xef\xbb\xbf{}",  # a BOM
    b"/* comment */ {}",
    b"null",
    b"true",
    b"0",
    b'"text"',
    b"[]",
    b"[{}]",
    b"\x00",
    b"\x00" * 64,
    b'{"a": "\x00"}',
    b"\r\n\r\n",
    b"PING\r\n",
    b"MSG x 1 2\r\nhi\r\n",
]
NOT_UTF8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xf4\x90\x80\x80"]


def with_field(body: dict, name: str, raw: str) -> bytes:
    """`body` as JSON with `name` holding the raw JSON text `raw` (not necessarily valid JSON)."""
    rest = {k: v for k, v in body.items() if k != name}
    text = json.dumps({"__slot__": 0, **rest}).replace('"__slot__": 0', f"{json.dumps(name)}: {raw}", 1)
    return text.encode()


def in_line(body: dict, name: str, raw: str) -> bytes:
    """`body` with the first order line's `name` holding `raw` (for bodies with `items`)."""
    line = with_field(body["items"][0], name, raw).decode()
    text = json.dumps({**body, "items": ["__line__"]}).replace('"__line__"', line, 1)
    return text.encode()


def pick_field(rng: random.Random, endpoint: Endpoint) -> str:
    names = list(endpoint.model.model_fields) or ["surprise"]
    return rng.choice([*names, *names, "surprise"])


def garbage_json(rng: random.Random, endpoint: Endpoint) -> bytes:
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(GARBAGE)
    if roll < 0.75:
        return rng.randbytes(rng.randint(1, 512))
    valid = json.dumps(endpoint.valid).encode()
    return valid[: rng.randint(0, max(0, len(valid) - 1))]  # cut short


def wrong_types(rng: random.Random, endpoint: Endpoint) -> bytes:
    value = rng.choice(WRONG_TYPES + ODD_STRINGS)
    if "items" in endpoint.valid and rng.random() < 0.4:
        return in_line(endpoint.valid, rng.choice(["sku", "qty", "price"]), value)
    return with_field(endpoint.valid, pick_field(rng, endpoint), value)


def huge_numbers(rng: random.Random, endpoint: Endpoint) -> bytes:
    value = rng.choice(HUGE_NUMBERS)
    if "items" in endpoint.valid and rng.random() < 0.5:
        return in_line(endpoint.valid, "qty", value)
    return with_field(endpoint.valid, pick_field(rng, endpoint), value)


def nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth


def deep_nesting(rng: random.Random, endpoint: Endpoint) -> bytes:
    depth = rng.choice([64, 200, 1000, 5000, 10_000, 21_000])
    text = nested(depth, rng.choice(["array", "object"]))
    if rng.random() < 0.5:
        return text.encode()
    return with_field(endpoint.valid, pick_field(rng, endpoint), text)


def oversized(rng: random.Random, endpoint: Endpoint, limits: Limits) -> bytes:
    size = rng.choice([limits.max_payload_bytes + 1, 2 * limits.max_payload_bytes, 256 * 1024, MAX_BODY])
    roll = rng.random()
    if roll < 0.3:
        return b" " * (size - 2) + b"{}"  # whitespace around a valid body: still too big
    if roll < 0.6 and "items" in endpoint.valid:
        lines = [{"sku": f"S{i:06d}", "qty": 1} for i in range(size // 26 + 1)]
        return json.dumps({**endpoint.valid, "items": lines}).encode()[:size] + b"]}"
    return with_field(endpoint.valid, pick_field(rng, endpoint), json.dumps("x" * size))


def non_utf8(rng: random.Random, endpoint: Endpoint) -> bytes:
    bad = rng.choice(NOT_UTF8)
    body = with_field(endpoint.valid, pick_field(rng, endpoint), '"__bad__"')
    if rng.random() < 0.3:
        return bad + json.dumps(endpoint.valid).encode()
    return body.replace(b"__bad__", b"a" + bad + b"z", 1)


# -- headers --------------------------------------------------------------------------------------------


def bad_keys(limits: Limits) -> list[str]:
    """Idempotency-Keys the service must refuse. None with white space at either end (nats-py strips a
    header's value, and a stripped key may be a good one) and none with CR or LF (a second header line)."""
    n = limits.max_idempotency_key_len
    return [
        "",
        "k" * (n + 1),
        "k" * 10_000,
        "k" * 200_000,
        "a b",
        "ключ-1",
        "a#b",
        "a\tb",
        "a\x00b",
        "a\x7fb",
        "a'b",
        'a"b',
        "a;b",
        "a*b",
        "a>b",
        "a,b",
        "🔑",
        "a\x1bb",
        "a\u2028b",
        "a%00b",
        "$JS.ACK.x",  # '$' is not a key character
    ]


def junk_headers(rng: random.Random) -> dict[str, str]:
    """Headers no OMS client sends: names the server or JetStream read, huge values, many lines."""
    choices: list[Callable[[], dict[str, str]]] = [
        lambda: {"Nats-Trace-Dest": f"events.orders.trace.{rng.randint(0, 9)}"},
        lambda: {"Nats-Trace-Dest": "events.orders.trace.x", "Nats-Trace-Only": "true"},
        lambda: {"Nats-Msg-Id": "evt_hostile", "Nats-Expected-Stream": STREAM},
        lambda: {"Nats-Expected-Last-Sequence": "0", "Nats-Rollup": "all"},
        lambda: {"Nats-Service-Error": "forged", "Nats-Service-Error-Code": "500"},
        lambda: {"Status": "503", "Description": "No Responders"},
        lambda: {"Nats-Request-Info": '{"acc":"OMS","user":"orders"}'},
        lambda: {"X-Pad": "p" * rng.choice([1000, 60_000, 400_000])},
        lambda: {f"X-H{i}": "v" for i in range(rng.choice([50, 500]))},
        lambda: {"X-Injected": "a\r\nIdempotency-Key: \xff"},
        lambda: {"X-Empty": ""},
    ]
    return rng.choice(choices)()


# -- the plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message: a request (`reply` None: the sender waits for the answer) or a publish with `reply`
    (maybe none: "") that nobody waits for. `denied`: the server refuses it to this user."""

    user: str
    kind: str
    subject: str
    body: bytes
    headers: dict[str, str] | None = None
    reply: str | None = None
    denied: bool = False
    valid: bool = False  # a valid request: it may answer OK (a read) but must change nothing

    def digest_text(self) -> bytes:
        head = json.dumps([self.user, self.kind, self.subject, self.headers, self.reply]).encode()
        return head + b"\0" + self.body


# Kinds of client messages and how often each is drawn.
WEIGHTS = {
    "garbage_json": 12,
    "wrong_types": 12,
    "huge_numbers": 10,
    "deep_nesting": 5,
    "oversized": 4,
    "non_utf8": 7,
    "bad_key": 10,
    "junk_headers": 5,
    "reply_to_events": 6,
    "reply_to_other_inbox": 6,
    "srv": 7,
    "js_api": 6,
    "js_forbidden": 3,
    "events_publish": 4,
    "valid_read": 3,
    "key_conflict": 1,
    "key_repeat": 1,
}
REPLY_TO_EVENTS = [*EVENTS, "events.orders.order_created.@ORDER@.x", "events.>", "events.*.*.*"]
REPLY_TO_OTHERS = [
    f"{OTHER_INBOX}.hostile",  # the same user's other connection
    f"{OWN_INBOX}.no-such-request",
    "_INBOX_orders.hostile",  # a service's private inbox (lives in OMS only)
    "_INBOX_inventory.x.y",
    "_R_.hostile.x",
    "orders.cancel",  # the answer sent on as a request to another endpoint
    "inventory.restock",
    "chaos.orders.set",
    "$SRV.PING",
    f"{JS_PREFIX}.CONSUMER.CREATE.{STREAM}",
    f"$JS.API.STREAM.PURGE.{STREAM}",
    f"{JS_PREFIX}.STREAM.PURGE.{STREAM}",
    f"$JS.ACK.{STREAM}.hostile.1.1.1.1700000000000000000.0",
]
# Push consumers admin asks for (the export is meant for pull consumers): where each would deliver the
# stream, in the OMS account, and to which queue group.
PUSH_DELIVER = [
    ("events.orders.pushed", None),  # into the stream itself: the server refuses a cycle
    ("orders.place", "orders"),  # every event as a request to the order service
    ("$SRV.PING", None),  # ... to every service's PING handler
    ("orders.get", "orders"),
    ("hostile.push", None),  # to nobody
    (f"$JS.API.STREAM.PURGE.{STREAM}", None),  # to the stream's own API
]


def push_consumer(deliver: str, group: str | None) -> Message:
    config = {"deliver_subject": deliver, "deliver_policy": "all", "ack_policy": "explicit"}
    if group:
        config["deliver_group"] = group
    body = json.dumps({"stream_name": STREAM, "config": config}).encode()
    return Message("admin", "js_push_consumer", f"{JS_PREFIX}.CONSUMER.CREATE.{STREAM}", body)


def js_body(rng: random.Random, subject: str) -> bytes:
    """A hostile JetStream API request: garbage, huge numbers, deep nesting, odd consumer configs."""
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(GARBAGE)
    if roll < 0.4:
        return nested(rng.choice([100, 20_000]), "object").encode()
    number = rng.choice(HUGE_NUMBERS)
    if ".MSG.GET." in subject or ".DIRECT.GET." in subject:
        return f'{{"seq": {number}, "last_by_subj": "events.>", "batch": {number}}}'.encode()
    if ".CONSUMER.CREATE." in subject:
        fields = ["inactive_threshold", "max_deliver", "ack_wait", "opt_start_seq", "max_waiting", "num_replicas"]
        return f'{{"stream_name": "{STREAM}", "config": {{"{rng.choice(fields)}": {number}}}}}'.encode()
    if ".MSG.NEXT." in subject:
        return f'{{"batch": {number}, "expires": {number}}}'.encode()
    return f'{{"subjects_filter": "{rng.choice([">", "events.>", "*"])}", "offset": {number}}}'.encode()


def plan(seed: int, messages: int, limits: Limits, *, push_consumers: bool = True) -> Iterator[Message]:
    """`messages` hostile (and a few valid, changeless) messages, the same for the same seed; with
    `push_consumers`, six of them are admin's requests for push consumers (`PUSH_DELIVER`)."""
    rng = random.Random(seed)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    turn: dict[tuple[str, str], int] = {}

    def cycle(user: str, kind: str, subjects: list) -> object:
        """Every subject in turn (each user and kind has its own turn), so all of them are covered."""
        i = turn.get((user, kind), 0)
        turn[(user, kind)] = i + 1
        return subjects[i % len(subjects)]

    keys = bad_keys(limits)
    pushes = {(k + 1) * messages // (len(PUSH_DELIVER) + 1): target for k, target in enumerate(PUSH_DELIVER)}
    pushes = pushes if push_consumers else {}
    for index in range(messages):
        if index in pushes:  # a handful, at fixed places: each may leave a consumer behind for good
            yield push_consumer(*pushes[index])
            continue
        user = rng.choice(USERS)
        kind = rng.choices(kinds, weights)[0]
        yield build(rng, user, kind, cycle, keys, limits)


def build(rng: random.Random, user: str, kind: str, cycle: Callable, keys: list[str], limits: Limits) -> Message:
    def message(subject: str, body: bytes, headers: dict | None = None, reply: str | None = None, **extra) -> Message:
        denied = refused(user, subject, reply, headers)
        return Message(user, kind, subject, body, headers, reply, denied=denied, **extra)

    if kind == "srv":
        subject = cycle(user, kind, SRV)
        body = rng.choice([b"", *GARBAGE[:8], rng.randbytes(64), nested(5000, "array").encode()])
        return message(subject, body, headers=junk_headers(rng) if rng.random() < 0.3 else None)
    if kind == "js_api":
        subject = cycle(user, kind, JS_REACHABLE[user])
        return message(subject, js_body(rng, subject))
    if kind == "js_forbidden":
        subject = cycle(user, kind, JS_FORBIDDEN)
        return message(subject, rng.choice([b"", b"{}", b'{"filter": "events.>"}', b'{"seq": 1}']))
    if kind == "events_publish":
        subject = cycle(user, kind, EVENTS)
        event = {"event_id": f"evt_hostile_{rng.randint(0, 10**9)}", "type": "order_created", "service": "orders"}
        body = rng.choice([json.dumps(event).encode(), b"", rng.randbytes(200), b"x" * 300_000])
        return message(subject, body, headers={"Nats-Msg-Id": event["event_id"]}, reply="")
    if kind in ("key_conflict", "key_repeat"):
        # The seed orders' keys (placed before the baseline): the same request again answers what it
        # answered then; another request under the key is a CONFLICT.
        index = rng.randrange(4)
        body = seed_order(index) if kind == "key_repeat" else seed_order(index, qty=2)
        headers = {IDEMPOTENCY_HEADER: seed_key(index)}
        return Message(user, kind, s.ORDERS_PLACE.subject, json.dumps(body).encode(), headers, valid=True)

    endpoint: Endpoint = cycle(user, kind, ENDPOINTS)
    subject, headers, reply, valid = endpoint.subject, None, None, False
    if kind == "garbage_json":
        body = garbage_json(rng, endpoint)
    elif kind == "wrong_types":
        body = wrong_types(rng, endpoint)
    elif kind == "huge_numbers":
        body = huge_numbers(rng, endpoint)
    elif kind == "deep_nesting":
        body = deep_nesting(rng, endpoint)
    elif kind == "oversized":
        body = oversized(rng, endpoint, limits)
    elif kind == "non_utf8":
        body = non_utf8(rng, endpoint)
    elif kind == "bad_key":  # a valid command: only its key stops it
        key = cycle(user, "bad_key.key", keys)
        return message(subject, json.dumps(endpoint.valid).encode(), headers={IDEMPOTENCY_HEADER: key})
    elif kind == "junk_headers":
        body, headers = wrong_types(rng, endpoint), junk_headers(rng)
    elif kind == "reply_to_events":  # a read's answer aimed at the stream's subjects
        body = json.dumps(endpoint.valid).encode() if not endpoint.mutating else garbage_json(rng, endpoint)
        reply = cycle(user, "reply_to_events.reply", REPLY_TO_EVENTS)
    elif kind == "reply_to_other_inbox":
        body = json.dumps(endpoint.valid).encode() if not endpoint.mutating else wrong_types(rng, endpoint)
        reply = cycle(user, "reply_to_other_inbox.reply", REPLY_TO_OTHERS)
    elif kind == "valid_read":
        endpoint = cycle(user, "valid_read.endpoint", [e for e in ENDPOINTS if not e.mutating])
        subject, body, valid = endpoint.subject, json.dumps(endpoint.valid).encode(), True
    else:
        raise ValueError(kind)
    return message(subject, spoiled(endpoint, body, limits), headers=headers, reply=reply, valid=valid)


def seed_order(index: int, qty: int = 1) -> dict:
    return {"customer_id": f"hostile-seed-{index}", "items": [{"sku": SKUS[index % 3], "qty": qty}]}


def seed_key(index: int) -> str:
    return f"hostile-seed-{index}"
