"""Hostile input on every subject: random JSON and bytes, huge and deeply nested bodies, odd headers and bad
Idempotency-Keys. Every reply is a well-formed envelope (an error with the micro error headers, or a valid
answer to a valid read), nothing changes, and every service still answers `$SRV.PING`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import nats.errors
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER
from pydantic import BaseModel, ValidationError

from bus import contract as c
from bus import subjects as s
from bus.client import IDEMPOTENCY_HEADER
from bus.errors import ERROR_CODES
from bus.settings import SERVICES, Limits, Settings
from inventory_svc.catalog import CATALOG

LIMITS = Limits()  # the `settings` fixture's, as every deployment starts
REPLY_TIMEOUT_S = 5.0
FUZZ = hypothesis_settings(
    max_examples=40,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Target:
    subject: str
    model: type[BaseModel]
    mutating: bool


TARGETS: tuple[Target, ...] = (
    *(Target(r.subject, r.request, r.mutating) for r in s.ROUTES),
    *(Target(s.chaos_subject(name, "set"), c.ChaosSet, True) for name in SERVICES),
)
READS = tuple(t for t in TARGETS if not t.mutating)


def accepted(target: Target, data: bytes) -> bool:
    """Whether the service will take `data` as a valid request (its own checks, run here)."""
    if len(data) > LIMITS.max_payload_bytes:
        return False
    try:
        target.model.model_validate_json(data.strip() or b"{}", context={"limits": LIMITS})
    except (ValidationError, ValueError, RecursionError):
        return False
    return True


# -- strategies -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
KNOWN = {"sku": st.sampled_from([item.sku for item in CATALOG])}


def from_schema(schema: dict[str, Any], defs: dict[str, Any], name: str = "") -> st.SearchStrategy[Any]:
    """Values that (mostly) fit a pydantic JSON Schema; custom validators may still refuse some."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name)
    if "anyOf" in schema:
        return st.one_of(*(from_schema(option, defs, name) for option in schema["anyOf"]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fields = {key: from_schema(sub, defs, key) for key, sub in properties.items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if kind == "array":
        return st.lists(
            from_schema(schema["items"], defs, name),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    if kind == "string":
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"], fullmatch=True)
            return KNOWN[name] | text if name in KNOWN else text
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 20), 40))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


def valid_objects(target: Target) -> st.SearchStrategy[dict[str, Any]]:
    schema = target.model.model_json_schema()
    return from_schema(schema, schema.get("$defs", {}))


def valid_bodies(target: Target) -> st.SearchStrategy[bytes]:
    return valid_objects(target).map(lambda body: json.dumps(body).encode())


def plausible_bodies(target: Target) -> st.SearchStrategy[bytes]:
    """JSON objects with the model's field names (and others), holding any JSON value: deep validation."""
    names = list(target.model.model_fields) or ["x"]
    keys = st.sampled_from(names) | st.text(max_size=10)
    objects = st.dictionaries(keys, json_values, max_size=6)
    return (objects | json_values).map(lambda body: json.dumps(body).encode())


deeply_nested = st.integers(100, 3000).flatmap(
    lambda depth: st.sampled_from([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth])
)
huge = st.integers(LIMITS.max_payload_bytes + 1, 3 * LIMITS.max_payload_bytes).flatmap(
    lambda size: st.sampled_from(
        [
            b"x" * size,
            json.dumps({"items": [{"sku": "KB-101", "qty": 1}] * (size // 25)}).encode(),
            json.dumps({"customer_id": "c" * size}).encode(),
        ]
    )
)
hostile_bytes = st.binary(max_size=512) | deeply_nested | huge | st.sampled_from([b"", b" ", b"null", b"[]", b"\x00"])

header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True).filter(
    lambda name: name.lower() != IDEMPOTENCY_HEADER.lower()
)
odd_headers = st.dictionaries(header_names, st.text(st.characters(codec="utf-8"), max_size=30), max_size=4)
bad_keys = st.one_of(
    st.text(min_size=LIMITS.max_idempotency_key_len + 1, max_size=LIMITS.max_idempotency_key_len + 50).filter(
        lambda k: k.strip() == k and "\r" not in k and "\n" not in k
    ),
    # Not at either end: nats-py strips header values, and a stripped " k" is the good key "k".
    st.from_regex(r"[A-Za-z0-9]{1,8}[ #!?*%$&\"'<>(){}\[\],;~^`|\\][A-Za-z0-9]{1,8}", fullmatch=True),
    st.sampled_from(["ключ-1", "key with spaces", "k" * (LIMITS.max_idempotency_key_len + 1)]),
)


# Values no field of the contract takes, as raw JSON text (JSON has no NaN or Infinity, but parsers take them):
# integers past 64 bits, up to the 4300 digits Python reads, numbers past a double, strings past every limit.
huge_integers = st.integers(19, 4299).flatmap(
    lambda digits: st.sampled_from(["9" * digits, "-" + "9" * digits, "1" + "0" * digits])
)
hostile_numbers = huge_integers | st.sampled_from(["1e400", "-1e400", "1e308", "-1.5e300", "NaN", "Infinity"])
long_strings = st.integers(201, 20_000).map(lambda n: json.dumps("x" * n))
# From two levels: `[]` is a valid value of a list field (chaos `endpoints`), and a list field refuses `[[]]`
# naming its element (`endpoints[0]`).
nested_values = st.integers(2, 3000).map(lambda depth: "[" * depth + "]" * depth)
NOT_UTF8 = '"__not_utf8__"'  # a string, replaced by one that is not UTF-8 once the body is bytes
shapes = st.sampled_from(["[]", "null", "0", "-1", "1e400", "NaN", '"text"', "true", "[{}]"])


def with_field(obj: dict[str, Any], name: str, value: str) -> str:
    """`obj` as JSON, with `name` holding the raw JSON text `value` (first, whatever it held before)."""
    rest = {k: v for k, v in obj.items() if k != name}
    return json.dumps({"__hostile__": 0, **rest}).replace('"__hostile__": 0', f"{json.dumps(name)}: {value}", 1)


def hostile_field_bodies(target: Target) -> st.SearchStrategy[tuple[bytes, str]]:
    """A valid body with one field (the model's, an order line's, or an unknown one) holding a hostile value;
    with the field the error must name ("body" for what this parser does not take as JSON: nested past its
    limit, not UTF-8)."""
    names = [*target.model.model_fields, "surprise"]

    def build(obj: dict[str, Any], name: str, line_name: str, value: str, in_line: bool) -> tuple[bytes, str]:
        if in_line and obj.get("items"):
            items = [json.loads(with_field(obj["items"][0], line_name, '"__line__"')), *obj["items"][1:]]
            text = json.dumps({**obj, "items": items}).replace('"__line__"', value, 1)
            field = f"items[0].{line_name}"
        else:
            text, field = with_field(obj, name, value), name
        data = text.encode().replace(NOT_UTF8.encode(), b'"\xff\xfe"', 1)
        too_deep = value.count("[") >= 200
        return data, "body" if too_deep or value == NOT_UTF8 else field

    return st.builds(
        build,
        valid_objects(target),
        st.sampled_from(names),
        st.sampled_from(["sku", "qty", "price"]),
        hostile_numbers | long_strings | nested_values | st.just(NOT_UTF8),
        st.booleans(),
    )


# -- sending and checking ----------------------------------------------------------


async def send(nc: Any, subject: str, data: bytes, headers: dict[str, str] | None) -> tuple[dict[str, Any], Any]:
    try:
        msg = await nc.request(subject, data, timeout=REPLY_TIMEOUT_S, headers=headers or None)
    except nats.errors.TimeoutError:
        raise AssertionError(f"{subject} did not answer {data[:80]!r} within {REPLY_TIMEOUT_S}s") from None
    body = json.loads(msg.data)
    assert isinstance(body, dict) and isinstance(body.get("ok"), bool), (subject, msg.data[:200])
    return body, msg.headers or {}


def assert_error(subject: str, body: dict[str, Any], headers: dict[str, str], code: str | None = None) -> None:
    """A well-formed error envelope with the micro error headers; never INTERNAL."""
    assert body["ok"] is False, (subject, body)
    error = body["error"]
    assert set(error) == {"code", "message", "retryable", "details"}, (subject, error)
    assert error["code"] in ERROR_CODES and error["code"] != "INTERNAL", (subject, error)
    assert isinstance(error["message"], str) and error["message"], (subject, error)
    assert error["retryable"] is False and isinstance(error["details"], dict), (subject, error)
    assert headers.get(ERROR_HEADER), (subject, headers)
    assert headers.get(ERROR_CODE_HEADER) == str(ERROR_CODES[error["code"]]), (subject, headers)
    if code is not None:
        assert error["code"] == code, (subject, error)


async def snapshot(stack: dict[str, Any]) -> dict[str, Any]:
    """What hostile input must not change."""
    client = stack["client"]
    info = await stack["js"].stream_info(stack["orders"].settings.stream_name)
    return {
        "stock": await client.call(s.INVENTORY_STOCK, {}),
        "reservations": await client.call(s.INVENTORY_RESERVATIONS, {}),
        "payments": await client.call(s.PAYMENT_LIST, {}),
        "orders": await client.call(s.ORDERS_LIST, {}),
        "sagas": await client.call(s.SAGA_LIST, {}),
        "chaos": [await client.request(s.chaos_subject(name, "get"), b"") for name in SERVICES],
        "events": info.state.messages,
    }


async def unchanged_and_alive(stack: dict[str, Any], baseline: dict[str, Any]) -> None:
    assert await snapshot(stack) == baseline
    for name in SERVICES:
        reply = await stack["nc"].request(f"$SRV.PING.{name}", b"", timeout=2)
        assert json.loads(reply.data)["name"] == name


async def baseline_of(stack: dict[str, Any]) -> dict[str, Any]:
    """Taken once per test, before its first example sends anything."""
    if "baseline" not in stack:
        stack["baseline"] = await snapshot(stack)
    return stack["baseline"]


# -- the properties ------------------------------------------------------------------


@FUZZ
@given(data=st.data())
async def test_random_json_bodies_get_an_envelope_and_change_nothing(stack, data):
    baseline = await baseline_of(stack)
    for _ in range(data.draw(st.integers(1, 6), label="messages")):
        target = data.draw(st.sampled_from(TARGETS), label="target")
        body = data.draw(plausible_bodies(target), label="body")
        headers = data.draw(odd_headers, label="headers")
        if accepted(target, body) and target.mutating:
            continue  # a valid command would act: that is not this test's business
        reply, reply_headers = await send(stack["nc"], target.subject, body, headers)
        if accepted(target, body):
            assert reply["ok"] or reply["error"]["code"] == "NOT_FOUND", (target.subject, body, reply)
        else:
            assert_error(target.subject, reply, reply_headers, "VALIDATION_ERROR")
    await unchanged_and_alive(stack, baseline)


@FUZZ
@given(data=st.data())
async def test_random_bytes_huge_and_deeply_nested_bodies_are_refused_by_field(stack, data):
    baseline = await baseline_of(stack)
    for _ in range(data.draw(st.integers(1, 4), label="messages")):
        target = data.draw(st.sampled_from(TARGETS), label="target")
        body = data.draw(hostile_bytes, label="body")
        if accepted(target, body):
            if target.mutating:
                continue
            reply, reply_headers = await send(stack["nc"], target.subject, body, None)
            assert reply["ok"] or reply["error"]["code"] == "NOT_FOUND", (target.subject, body[:80], reply)
            continue
        reply, reply_headers = await send(stack["nc"], target.subject, body, None)
        assert_error(target.subject, reply, reply_headers, "VALIDATION_ERROR")
        if len(body) > LIMITS.max_payload_bytes:
            assert reply["error"]["details"]["field"] == "body", reply
    await unchanged_and_alive(stack, baseline)


@FUZZ
@given(data=st.data())
async def test_a_bad_idempotency_key_is_refused_before_anything_happens(stack, data):
    """Even a valid command (reserve, authorize, restock, chaos...) does nothing with a bad key."""
    baseline = await baseline_of(stack)
    for _ in range(data.draw(st.integers(1, 4), label="messages")):
        target = data.draw(st.sampled_from(TARGETS), label="target")
        body = data.draw(valid_bodies(target), label="body")
        key = data.draw(bad_keys, label="key")
        headers = data.draw(odd_headers, label="headers") | {IDEMPOTENCY_HEADER: key}
        reply, reply_headers = await send(stack["nc"], target.subject, body, headers)
        assert_error(target.subject, reply, reply_headers, "VALIDATION_ERROR")
        assert IDEMPOTENCY_HEADER in reply["error"]["message"], reply
    await unchanged_and_alive(stack, baseline)


@FUZZ
@given(data=st.data())
async def test_valid_random_reads_answer_a_result_or_not_found(stack, data):
    baseline = await baseline_of(stack)
    for _ in range(data.draw(st.integers(1, 6), label="messages")):
        target = data.draw(st.sampled_from(READS), label="target")
        body = data.draw(valid_bodies(target), label="body")
        reply, reply_headers = await send(stack["nc"], target.subject, body, data.draw(odd_headers, label="headers"))
        if not accepted(target, body):  # a custom validator refused what the schema allows
            assert_error(target.subject, reply, reply_headers, "VALIDATION_ERROR")
        elif reply["ok"]:
            assert isinstance(reply["result"], dict) and ERROR_HEADER not in reply_headers, reply
        else:
            assert_error(target.subject, reply, reply_headers, "NOT_FOUND")
    await unchanged_and_alive(stack, baseline)


@FUZZ
@given(data=st.data())
async def test_hostile_numbers_strings_and_shapes_are_refused_naming_the_field_never_internal(stack, data):
    """Huge integers, numbers past a double, NaN and Infinity, long strings, deep nesting and bytes that are not
    UTF-8, in any field of a valid command on every subject (the mutating ones included: nothing may act), and
    bodies that are not objects: VALIDATION_ERROR naming the field, nothing changed."""
    baseline = await baseline_of(stack)
    for _ in range(data.draw(st.integers(1, 6), label="messages")):
        target = data.draw(st.sampled_from(TARGETS), label="target")
        if data.draw(st.booleans(), label="whole body"):
            body, field = data.draw(shapes, label="body").encode(), "body"
        else:
            body, field = data.draw(hostile_field_bodies(target), label="body and field")
        reply, reply_headers = await send(stack["nc"], target.subject, body, None)
        assert_error(target.subject, reply, reply_headers, "VALIDATION_ERROR")
        details = reply["error"]["details"]
        named = [details.get("field")] + [e["field"] for e in details.get("errors", [])]
        # a value inside the field may be what is wrong ("items": [[]] is refused at items[0])
        inside = (f"{field}.", f"{field}[")
        assert any(n == field or (n or "").startswith(inside) for n in named), (target.subject, body[:120], reply)
    await unchanged_and_alive(stack, baseline)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.subject)
def test_no_hostile_value_in_any_field_escapes_validation(target):
    """The same, without a broker, for every field of every request model and each kind of value: pydantic
    refuses it (a validator that raised anything else, an OverflowError say, was an INTERNAL on the wire)."""
    values = ["9" * 401, "-" + "9" * 25, "18446744073709551616", "1e400", "NaN", "-Infinity", json.dumps("x" * 5000)]
    for name in [*target.model.model_fields, "surprise"]:
        for value in values:
            text = with_field({}, name, value)  # the missing fields are refused too: this one must be among them
            with pytest.raises(ValidationError) as refused:
                target.model.model_validate_json(text, context={"limits": LIMITS})
            assert name in [".".join(map(str, e["loc"])) for e in refused.value.errors()], (name, value)


# -- each limit, by example ------------------------------------------------------------

LINE = {"sku": "KB-101", "qty": 1}
LIMIT_CASES = [
    # (subject, body, headers, the field the error names)
    ("orders.place", {"customer_id": "c1", "items": [LINE] * 0}, None, "items"),
    (
        "orders.place",
        {"customer_id": "c1", "items": [{"sku": f"SKU-{i}", "qty": 1} for i in range(LIMITS.max_items_per_order + 1)]},
        None,
        "items",
    ),
    (
        "orders.place",
        {"customer_id": "c1", "items": [LINE | {"qty": LIMITS.max_qty_per_line + 1}]},
        None,
        "items[0].qty",
    ),
    ("inventory.check", {"items": [LINE | {"qty": LIMITS.max_qty_per_line + 1}]}, None, "items[0].qty"),
    ("orders.place", {"customer_id": "not valid", "items": [LINE]}, None, "customer_id"),
    ("orders.place", {"customer_id": "c1", "items": [{"sku": "kb-101", "qty": 1}]}, None, "items[0].sku"),
    ("orders.get", {"order_id": "ord/../x"}, None, "order_id"),
    (
        "payment.authorize",
        {"order_id": "o1", "customer_id": "c1", "amount_cents": 1, "currency": "usd", "method": "card"},
        None,
        "currency",
    ),
    ("orders.saga.get", {"saga_id": "saga id"}, None, "saga_id"),
    ("orders.place", {"customer_id": "c" * LIMITS.max_payload_bytes, "items": [LINE]}, None, "body"),
    (
        "orders.cancel",
        {"order_id": "o1"},
        {IDEMPOTENCY_HEADER: "k" * (LIMITS.max_idempotency_key_len + 1)},
        IDEMPOTENCY_HEADER,
    ),
    ("orders.place", {"customer_id": "c1", "items": [LINE], "surprise": 1}, None, "surprise"),
    # Hostile numbers: each was answered INTERNAL (an OverflowError), or taken as it was.
    ("chaos.inventory.set", {"error_rate": 10**400}, None, "error_rate"),
    ("chaos.payment.set", {"drop_reply_rate": -(10**30)}, None, "drop_reply_rate"),
    ("chaos.orders.set", {"seed": 2**64}, None, "seed"),
    ("chaos.orders.set", {"error_rate": float("nan")}, None, "error_rate"),
    ("chaos.orders.set", {"latency_ms": float("inf")}, None, "latency_ms"),
    ("inventory.restock", {"sku": "KB-101", "qty": 1, "price_cents": 10**400}, None, "price_cents"),
    ("orders.place", {"customer_id": "c1", "items": [LINE | {"qty": 10**25}]}, None, "items[0].qty"),
    # Fulfilment: money and units past their limits, ids past theirs.
    ("payment.capture", {"order_id": "o1", "capture_id": "c1", "amount_cents": 10**400}, None, "amount_cents"),
    ("payment.refund", {"order_id": "o1", "refund_id": "r1", "amount_cents": 10**25}, None, "amount_cents"),
    ("payment.reverse_capture", {"order_id": "o1", "capture_id": "c" * 129}, None, "capture_id"),
    (
        "inventory.receive_return",
        {"order_id": "o1", "return_id": "r1", "items": [LINE | {"qty": LIMITS.max_qty_per_line + 1}]},
        None,
        "items[0].qty",
    ),
    ("inventory.commit", {"order_id": "o1", "commit_id": "has space"}, None, "commit_id"),
]


async def test_every_limit_is_a_validation_error_naming_its_field(stack):
    baseline = await snapshot(stack)
    for subject, body, headers, field in LIMIT_CASES:
        reply, reply_headers = await send(stack["nc"], subject, json.dumps(body).encode(), headers)
        assert_error(subject, reply, reply_headers, "VALIDATION_ERROR")
        details = reply["error"]["details"]
        named = [details.get("field")] + [e["field"] for e in details.get("errors", [])]
        assert field in named, (subject, field, reply)
        assert field in reply["error"]["message"], reply
    await unchanged_and_alive(stack, baseline)


def test_the_limits_are_settings(monkeypatch):
    monkeypatch.setenv("OMS_LIMITS__MAX_ITEMS_PER_ORDER", "2")
    monkeypatch.setenv("OMS_LIMITS__MAX_QTY_PER_LINE", "5")
    limits = Settings().limits
    three = {"customer_id": "c1", "items": [{"sku": f"S{i}", "qty": 1} for i in range(3)]}
    for body, field in ((three, "items"), ({"customer_id": "c1", "items": [{"sku": "S", "qty": 6}]}, "items.0.qty")):
        with pytest.raises(ValidationError) as refused:
            c.PlaceOrder.model_validate_json(json.dumps(body), context={"limits": limits})
        assert [".".join(map(str, e["loc"])) for e in refused.value.errors()] == [field]
