"""`oms schema`: the wire contract's models, as tables or (with --json) as JSON Schema."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from bus import contract as c
from bus.subjects import ROUTES
from cli.options import JsonFlag, OutputOption
from cli.output import Output
from cli.session import settings_of
from cli.tables import Col, FitTable

app = typer.Typer()


def _kind(name: str) -> str:
    model = getattr(c, name)
    if issubclass(model, c.Command):
        return "command"
    return "event" if model is c.Event else "result"


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " | ".join(_type(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list[{_type(prop.get('items', {}))}]"
    if "enum" in prop:
        return " | ".join(map(str, prop["enum"]))
    if prop.get("format") == "date-time":
        return "time"
    return str(prop.get("type", "any"))


def _bounds(prop: dict[str, Any]) -> str:
    found = []
    for option in (prop, *prop.get("anyOf", [])):
        for key, word in (
            ("minimum", ">="),
            ("maximum", "<="),
            ("minLength", "length >="),
            ("maxLength", "length <="),
            ("minItems", "items >="),
            ("maxItems", "items <="),
        ):
            if key in option:
                found.append(f"{word} {option[key]:,}" if isinstance(option[key], int) else f"{word} {option[key]}")
        if "pattern" in option:
            found.append(option["pattern"])
    if prop.get("default") is not None:
        found.append(f"default {prop['default']}")
    return ", ".join(found)


def overview(everything: dict[str, dict[str, Any]]) -> RenderableType:
    served: dict[str, list[str]] = {"ChaosSet": ["chaos.<service>.set"], "ChaosQuery": ["chaos.<service>.get|clear"]}
    for route in ROUTES:
        served.setdefault(route.request.__name__, []).append(route.subject)
    table = FitTable(
        [Col("Model"), Col("Kind"), Col("Subject", drop=2), Col("Fields", fold=True, drop=1, min_fold=20)],
        title="The contract (`oms schema MODEL` for one, `--json` for the JSON Schema)",
    )
    for name, schema in sorted(everything.items(), key=lambda item: (_kind(item[0]), item[0])):
        table.add_row(name, _kind(name), ", ".join(served.get(name, [])), ", ".join(schema.get("properties", {})))
    return table


def fields(name: str, schema: dict[str, Any]) -> RenderableType:
    required = set(schema.get("required", []))
    table = FitTable(
        [
            Col("Field"),
            Col("Type", fold=True, min_fold=12),
            Col("Required", drop=3),
            Col("Bounds", fold=True, drop=1, min_fold=12),
            Col("Description", fold=True, drop=2, min_fold=16),
        ],
        title=f"{name} ({_kind(name)})",
    )
    for field, prop in schema.get("properties", {}).items():
        described = prop.get("description") or next(
            (p["description"] for p in prop.get("anyOf", []) if "description" in p), ""
        )
        table.add_row(field, _type(prop), "yes" if field in required else "", _bounds(prop), described)
    doc = (getattr(c, name).__doc__ or "").strip()
    return Group(Text(doc, style="dim"), table) if doc and not doc.startswith(("A request body", "A reply")) else table


@app.command()
def schema(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="MODEL",
            help="One model, e.g. PlaceOrder; default all.",
            autocompletion=lambda incomplete: sorted(n for n in c.schemas() if n.startswith(incomplete)),
        ),
    ] = None,
    output: OutputOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the contract's commands, results and events: a table of them, or of one model's fields; --json
    prints their JSON Schema, with the input limits this configuration enforces."""
    everything = c.schemas(settings_of(ctx).limits)
    out = Output.of(output, as_json)
    if name is None:
        out.result(everything, overview(everything))
        return
    if name not in everything:
        raise typer.BadParameter(f"no model {name!r}; one of: {', '.join(sorted(everything))}", param_hint="'MODEL'")
    out.result(everything[name], fields(name, everything[name]))
