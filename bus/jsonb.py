"""JSON in and out for the hot paths: compact, through pydantic-core (several times faster than `json`).

`dumps` gives bytes (message bodies, blobs), `text` a str (TEXT columns); both are compact and
keep non-ASCII characters as UTF-8. `loads` takes bytes or str and raises ValueError on bad JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json, to_json


def dumps(value: Any) -> bytes:
    return to_json(value)


def text(value: Any) -> str:
    return to_json(value).decode()


def loads(data: bytes | str) -> Any:
    return from_json(data)
