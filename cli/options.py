"""Options several commands share."""

from __future__ import annotations

from typing import Annotated

import typer

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON (the contract's field names) instead.")
]

KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Idempotency-Key: a repeat with the same key returns the first outcome instead of acting "
        "again. Default: a fresh UUID.",
    ),
]
