"""Tables that fit the terminal without cutting what matters.

A column is either shown whole (ids, statuses, numbers, times: never cut) or folds onto more lines (free
text). When a table is too wide for the width it is given, columns with a short form switch to it (a
time of day instead of a date and time), then the least important columns are left out, in the order
their `drop` says; columns with `drop=0` always stay. `--output wide` gives a table all the room it
wants, so every column shows in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box as boxes
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

Cell = str | Text | tuple[str | Text, str | Text]  # a value, or (long form, short form)


@dataclass(frozen=True)
class Col:
    """One column: its header, how it may give way when room is short, and its alignment."""

    header: str
    justify: Any = "left"
    drop: int = 0  # 0: always shown; otherwise left out when room is short, the highest number first
    fold: bool = False  # free text that may wrap onto more lines (never below `min_fold` characters)
    min_fold: int = 10


def _text(value: str | Text) -> Text:
    return value if isinstance(value, Text) else Text(str(value))


def _width(value: str | Text) -> int:
    return max((Text(line).cell_len for line in _text(value).plain.splitlines()), default=0)


class FitTable:
    """A rich table that chooses its columns when it is rendered, for the width it gets."""

    def __init__(
        self,
        columns: Sequence[Col],
        *,
        title: str | Text | None = None,
        caption: str | None = None,
        show_header: bool = True,
        box: boxes.Box | None = boxes.HEAVY_HEAD,
    ) -> None:
        self.columns = list(columns)
        self.rows: list[list[Cell]] = []
        self.title = title
        self.caption = caption
        self.show_header = show_header
        self.box = box

    def add_row(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    @property
    def row_count(self) -> int:
        return len(self.rows)

    # -- choosing columns -------------------------------------------------

    def _cell(self, cell: Cell, short: bool) -> str | Text:
        if isinstance(cell, tuple):
            return cell[1] if short else cell[0]
        return cell

    def _full(self, index: int, short: bool) -> int:
        col = self.columns[index]
        widths = [_width(self._cell(row[index], short)) for row in self.rows]
        return max([len(col.header) if self.show_header else 0, *widths])

    def _needed(self, chosen: list[int], short: bool) -> int:
        """The fewest characters the chosen columns take: whole ones in full, folding ones at their minimum."""
        total = 0
        for i in chosen:
            full = self._full(i, short)
            total += min(full, self.columns[i].min_fold) if self.columns[i].fold else full
        pads = 2 * len(chosen)
        lines = (len(chosen) + 1) if self.box is not None else 0
        return total + pads + lines

    def choose(self, width: int) -> tuple[list[int], bool]:
        """The columns shown at `width`, and whether in their short forms."""
        chosen = list(range(len(self.columns)))
        if self._needed(chosen, short=False) <= width:
            return chosen, False
        short = True
        while self._needed(chosen, short) > width:
            droppable = [i for i in chosen if self.columns[i].drop]
            if not droppable:
                break
            chosen.remove(max(droppable, key=lambda i: (self.columns[i].drop, i)))
        return chosen, short

    def table(self, width: int) -> Table:
        chosen, short = self.choose(width)
        table = Table(title=self.title, caption=self.caption, show_header=self.show_header, box=self.box)
        table.title_justify = table.caption_justify = "left"
        for i in chosen:
            col = self.columns[i]
            if col.fold:
                table.add_column(col.header, justify=col.justify, overflow="fold")
            else:
                table.add_column(col.header, justify=col.justify, no_wrap=True, min_width=self._full(i, short))
        for row in self.rows:
            table.add_row(*(self._cell(row[i], short) for i in chosen))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table(options.max_width))


def key_values(rows: Sequence[tuple[str, RenderableType]]) -> Table:
    """A two-column table of labels and values, without borders."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    return table
