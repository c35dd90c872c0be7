"""Options several commands share: output, paging and time windows, idempotency keys, and argument names."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, get_args

import typer
from pydantic import BaseModel

from cli import completion
from cli.output import Format


def status_choices(name: str, query: type[BaseModel]) -> type[StrEnum]:
    """The --status choices of a list, from its query model in the contract (`status: Literal[...] | None`)."""
    literal = get_args(query.model_fields["status"].annotation)[0]
    return StrEnum(name, [(s, s) for s in get_args(literal)])  # type: ignore[return-value]


JsonFlag = Annotated[bool, typer.Option("--json", help="Same as --output json.")]

OutputOption = Annotated[
    Format | None,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="table (fits the terminal; less important columns fold or drop), wide (every column in full), "
        "json (the contract's result), jsonl (one line per item).",
    ),
]

KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Idempotency-Key: a repeat with the same key returns the first outcome instead of acting "
        "again. Default: a fresh UUID.",
    ),
]

# -- arguments: one name per kind of thing, completed from a running stack ------------------------------

OrderIdArgument = Annotated[
    str, typer.Argument(metavar="ORDER_ID", help="An order id (ord_…).", autocompletion=completion.order_ids)
]

# -- lists ----------------------------------------------------------------------------------------------

LimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit",
        "-n",
        min=1,
        max=1000,
        help="At most this many, 50 by default (with --all: per page, 500 by default).",
    ),
]
BeforeOption = Annotated[
    str | None,
    typer.Option("--before", metavar="ID", help="Only older than this id (the cursor a page ends with)."),
]
AfterOption = Annotated[str | None, typer.Option("--after", metavar="ID", help="Only newer than this id.")]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        help="Only created at or after TIME: RFC 3339 (2026-11-26T14:00:00Z; without a zone, UTC as the "
        "tables show), a date, or an age (30s, 10m, 2h, 7d).",
    ),
]
UntilOption = Annotated[
    str | None, typer.Option("--until", metavar="TIME", help="Only created before TIME (as for --since).")
]
AllFlag = Annotated[
    bool,
    typer.Option("--all", help="Page through everything; with --output jsonl each page is printed as it arrives."),
]

_AGE = re.compile(r"^(\d{1,9})(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, flag: str, now: datetime | None = None) -> datetime:
    """`--since`/`--until` as an aware UTC time; anything else is a usage error naming the flag."""
    text = text.strip()
    age = _AGE.fullmatch(text)
    if age:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        when = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a time: give RFC 3339 (2026-11-26T14:00:00Z), a date (2026-11-26) "
            "or an age (30s, 10m, 2h, 7d)",
            param_hint=f"'{flag}'",
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
