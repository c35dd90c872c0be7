"""Printing a command's answer: tables for people, the contract's `result` verbatim for scripts.

`--output table` (the default) fits the terminal (`cli.tables`); `wide` shows every column in full,
however wide; `json` prints the result as one indented document; `jsonl` prints one JSON line per item of
a list (a page at a time, as it comes, with `--all`) and anything else as one line. `--json` is
`--output json`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType

WIDE_COLUMNS = 10_000  # room enough for any table of ours on one line per row


class Format(StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    JSONL = "jsonl"


class Output:
    """Where one command prints; JSON goes to stdout unformatted so it pipes into jq."""

    def __init__(self, fmt: Format | bool | None = None) -> None:
        if isinstance(fmt, bool) or fmt is None:
            fmt = Format.JSON if fmt else Format.TABLE
        self.format = fmt
        wide = fmt is Format.WIDE
        self.console = Console(highlight=False, width=WIDE_COLUMNS if wide else None, soft_wrap=False)

    @classmethod
    def of(cls, output: Format | None, as_json: bool = False) -> Output:
        """From `--output` and its alias `--json` (which wins)."""
        return cls(Format.JSON if as_json else (output or Format.TABLE))

    @property
    def as_json(self) -> bool:
        """Machine output (json or jsonl): no tables, no notes on stdout."""
        return self.format in (Format.JSON, Format.JSONL)

    def result(self, raw: Any, *views: RenderableType, items: str | None = None) -> None:
        """`raw` as JSON (with jsonl, each element of `raw[items]` on a line of its own), or the views."""
        if self.format is Format.JSONL:
            if items is not None and isinstance(raw, dict) and isinstance(raw.get(items), list):
                self.lines(raw[items])
            else:
                self.json(raw, line=True)
        elif self.format is Format.JSON:
            self.json(raw)
        else:
            for view in views:
                self.console.print(view)

    def lines(self, rows: list[Any]) -> None:
        """JSON lines, one per row, flushed at once (a page of `--all` reaches a pipe as it comes)."""
        sys.stdout.write("".join(json.dumps(row, default=_plain, separators=(",", ":")) + "\n" for row in rows))
        sys.stdout.flush()

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
        """A line for people (suppressed for json and jsonl, so stdout stays machine-readable)."""
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
