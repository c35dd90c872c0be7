"""`oms schema`: the JSON Schema of every model in the wire contract."""

from __future__ import annotations

from typing import Annotated

import typer

from bus.contract import schemas
from cli.options import JsonFlag
from cli.output import Output

app = typer.Typer()


@app.command()
def schema(
    name: Annotated[str | None, typer.Argument(help="One model, e.g. PlaceOrder; default all.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print the JSON Schema of the contract's commands, results and events (always JSON)."""
    everything = schemas()
    if name is None:
        Output(as_json=True).json(everything)
        return
    if name not in everything:
        raise typer.BadParameter(f"no model {name!r}; one of: {', '.join(sorted(everything))}", param_hint="'NAME'")
    Output(as_json=True).json(everything[name])
