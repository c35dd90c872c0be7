"""Printing a command's answer: the contract's `result` verbatim with --json, rich views otherwise."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType


class Output:
    """Where one command prints; JSON goes to stdout unformatted so it pipes into jq."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False)

    def result(self, raw: Any, *views: RenderableType) -> None:
        """`raw` as JSON, or the views."""
        if self.as_json:
            self.json(raw)
        else:
            for view in views:
                self.console.print(view)

    def json(self, raw: Any, *, line: bool = False) -> None:
        """One JSON document; `line` prints it on one line (for a stream of JSON lines)."""
        text = (
            json.dumps(raw, default=_plain, separators=(",", ":"))
            if line
            else json.dumps(raw, indent=2, default=_plain)
        )
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """A line for people (suppressed with --json, so stdout stays one JSON document)."""
        if not self.as_json:
            self.console.print(text)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def plain(value: Any) -> Any:
    """A dataclass tree as JSON-ready data (paths as strings)."""
    return json.loads(json.dumps(value, default=_plain))
