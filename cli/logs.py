"""`oms logs`: the services' JSON-line logs under OMS_HOME/logs, interleaved by time, filtered, followed."""

from __future__ import annotations

import heapq
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from bus.settings import SERVICES
from cli import completion
from cli.failures import ExitCode
from cli.options import JsonFlag
from cli.processes import NATS_SERVER, Layout
from cli.session import settings_of

app = typer.Typer()

POLL_S = 0.25
LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red", "critical": "bold red"}
HEAD = ("ts", "level", "service", "event")


@dataclass(frozen=True)
class LogLine:
    """One line of a log; a line that is not JSON (a traceback, nats-server) sorts with the line before it."""

    ts: str
    source: str
    text: str
    record: dict[str, Any] | None


class LogFile:
    """A log read in whole lines from where the last read stopped; a truncated file is read again."""

    def __init__(self, source: str, path: Path) -> None:
        self.source = source
        self.path = path
        self.offset = 0
        self.last_ts = ""

    def read(self) -> list[LogLine]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:
                self.offset = 0
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        lines = []
        for raw in chunk[:end].decode(errors="replace").splitlines():
            record = parse(raw)
            if record is not None:
                self.last_ts = str(record.get("ts", self.last_ts))
            lines.append(LogLine(self.last_ts, self.source, raw, record))
        return lines


def parse(raw: str) -> dict[str, Any] | None:
    if not raw.startswith("{"):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "event" in record else None


def needles(ident: str) -> tuple[str, ...]:
    """What an order's lines contain: its id, or its saga's id (`ord_X` runs saga `saga_X`)."""
    return (ident, "saga_" + ident.removeprefix("ord_")) if ident.startswith("ord_") else (ident,)


class OrderFilter:
    """Keeps lines with a field value containing the order's id, and the lines that are not JSON (tracebacks)
    following a kept line of the same file; remembers that across reads, so it works while following."""

    def __init__(self, ident: str | None) -> None:
        self.wanted = needles(ident) if ident else ()
        self.keeping: dict[str, bool] = {}

    def __call__(self, lines: Iterable[LogLine]) -> list[LogLine]:
        if not self.wanted:
            return list(lines)
        kept = []
        for line in lines:
            if line.record is not None:
                values = [str(v) for k, v in line.record.items() if k not in HEAD or k == "event"]
                keep = any(n in v for n in self.wanted for v in values)
            else:
                keep = self.keeping.get(line.source, False) or any(n in line.text for n in self.wanted)
            self.keeping[line.source] = keep
            if keep:
                kept.append(line)
        return kept


def readable(line: LogLine) -> Text:
    """time service level event key=value…; lines that are not JSON as they are."""
    if line.record is None:
        return Text(line.text, style="dim")
    r = line.record
    level = str(r.get("level", ""))
    text = Text.assemble(
        (str(r.get("ts", ""))[11:23], "dim"),
        " ",
        (f"{r.get('service', line.source):<9}", "bold"),
        " ",
        (f"{level:<7}", LEVEL_STYLE.get(level, "")),
        " ",
        (str(r.get("event", "")), "bold" if level in ("warning", "error", "critical") else ""),
    )
    exc = None
    for key, value in r.items():
        if key in HEAD:
            continue
        if key == "exc":
            exc = str(value)
            continue
        text.append(f" {key}=", style="cyan")
        text.append(value if isinstance(value, str) else json.dumps(value, default=str))
    if exc:
        text.append("\n" + exc, style="red")
    return text


def as_json(line: LogLine) -> str:
    """A JSON line verbatim; any other line wrapped, so stdout stays one JSON object per line."""
    if line.record is not None:
        return line.text
    return json.dumps({"ts": line.ts, "service": line.source, "raw": line.text})


@app.command()
def logs(
    ctx: typer.Context,
    service: Annotated[
        str | None,
        typer.Argument(
            metavar="SERVICE",
            help=f"One of {', '.join(SERVICES)} (or {NATS_SERVER}); default the three services.",
            autocompletion=completion.services,
        ),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            "--order",
            metavar="ORDER_ID",
            help="Only lines about this order (its id, or its saga's, in any field).",
            autocompletion=completion.order_ids,
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")] = False,
    lines: Annotated[
        int | None, typer.Option("--lines", "-n", min=0, help="Only the last N lines (before following).")
    ] = None,
    raw_json: JsonFlag = False,
) -> None:
    """Print the services' logs (`OMS_HOME/logs/<service>.log`) readably, interleaved by time."""
    if service is not None and service not in (*SERVICES, NATS_SERVER):
        raise typer.BadParameter(f"{service!r} is not one of {', '.join((*SERVICES, NATS_SERVER))}")
    layout = Layout.of(settings_of(ctx))
    files = [LogFile(name, layout.log_file(name)) for name in ([service] if service else SERVICES)]
    err = Console(stderr=True, soft_wrap=True)
    if not any(f.path.exists() for f in files):
        where = ", ".join(str(f.path) for f in files)
        err.print(f"[bold red]error:[/] no log at {where}: `oms up` writes them (is OMS_HOME right?)")
        raise typer.Exit(ExitCode.UNAVAILABLE)
    out = Console(highlight=False, soft_wrap=True)
    keep = OrderFilter(order)

    def emit(batch: Iterable[LogLine]) -> None:
        for line in batch:
            if raw_json:
                sys.stdout.write(as_json(line) + "\n")
            else:
                out.print(readable(line))
        sys.stdout.flush()

    def read_all() -> list[LogLine]:
        return list(heapq.merge(*(keep(f.read()) for f in files), key=lambda line: line.ts))

    shown = read_all()
    emit(shown[max(0, len(shown) - lines) :] if lines is not None else shown)
    if not follow:
        if order and not shown:
            err.print(f"[dim]no line mentions {order}[/]")
        return
    try:
        while True:
            time.sleep(POLL_S)
            emit(read_all())
    except KeyboardInterrupt:
        return
