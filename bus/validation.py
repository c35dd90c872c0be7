"""Validation errors in our words: `items[0].qty: at most 1000 per line`, not pydantic's phrasing.

Used by the service runner (VALIDATION_ERROR replies) and the CLI (usage errors), so a caller reads the
same sentence either way. Nothing here echoes the caller's input back: only field names (bounded), and
the bounds and choices the contract declares.
"""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import ValidationError

FIELD_NAME_MAX = 64  # an unknown field's name is the caller's text: echo a bounded prefix only

TIME_FORM = "a time in RFC 3339 with its zone, e.g. 2026-11-26T14:00:00Z"
_PLAIN = {
    "missing": "required",
    "extra_forbidden": "not a field of this request",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_parsing_size": "must be a whole number of a sensible size",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "json_invalid": "not valid JSON",
    "json_type": "not valid JSON",
    "datetime_type": f"must be {TIME_FORM}",
    "datetime_parsing": f"must be {TIME_FORM}",
    "datetime_from_date_parsing": f"must be {TIME_FORM}",
    "timezone_aware": f"must be {TIME_FORM}",
    "recursion_loop": "nested too deeply",
}


class Problem(TypedDict):
    field: str
    message: str
    type: str


def field_path(loc: tuple[int | str, ...]) -> str:
    """('items', 0, 'qty') -> items[0].qty; () -> body (the request as a whole)."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if len(path) > FIELD_NAME_MAX:
        path = path[:FIELD_NAME_MAX] + "…"
    return path or "body"


def _words(kind: str, ctx: dict[str, Any], msg: str) -> str:
    """One pydantic error type as a short phrase (the bounds come from the contract, never the input)."""
    if kind in _PLAIN:
        return _PLAIN[kind]
    match kind:
        case "value_error" | "assertion_error":
            return msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
        case "less_than_equal":
            return f"at most {ctx.get('le')}"
        case "less_than":
            return f"must be below {ctx.get('lt')}"
        case "greater_than_equal":
            return f"at least {ctx.get('ge')}"
        case "greater_than":
            return f"must be above {ctx.get('gt')}"
        case "string_too_short":
            n = ctx.get("min_length")
            return "must not be empty" if n == 1 else f"at least {n} characters"
        case "string_too_long":
            return f"at most {ctx.get('max_length')} characters"
        case "too_short":
            n = ctx.get("min_length")
            return "must not be empty" if n == 1 else f"at least {n} items"
        case "too_long":
            return f"at most {ctx.get('max_length')} items"
        case "string_pattern_mismatch":
            return f"must match {ctx.get('pattern')}"
        case "literal_error" | "enum":
            return f"must be one of {ctx.get('expected')}"
    return msg[:1].lower() + msg[1:]


def problems(exc: ValidationError) -> list[Problem]:
    """Each error of `exc` as a field and a phrase."""
    found: list[Problem] = []
    for err in exc.errors(include_url=False, include_input=False):
        kind = err["type"]
        ctx = err.get("ctx") or {}
        found.append({"field": field_path(tuple(err["loc"])), "message": _words(kind, ctx, err["msg"]), "type": kind})
    return found


def sentence(problem: Problem) -> str:
    """`items[0].qty: at most 1000 per line`; a problem of the whole request is its phrase alone."""
    if problem["field"] == "body" and problem["type"] in ("value_error", "assertion_error"):
        return problem["message"]
    return f"{problem['field']}: {problem['message']}"


def summary(found: list[Problem], shown: int = 3) -> str:
    text = "; ".join(sentence(p) for p in found[:shown])
    if len(found) > shown:
        text += f"; and {len(found) - shown} more"
    return text
