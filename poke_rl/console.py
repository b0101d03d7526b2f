"""What long commands show: one progress implementation and one table style for every command.

``Progress`` is a rich bar on stderr when stderr is a terminal; otherwise (logs, CI, pipes) it
prints one plain line each time a further ``1 / plain_lines`` of the total is done, and at the
end, so a log file shows progress without control characters. Tables and messages go to stdout
(``print_table``) or stderr (``Progress.message``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Literal

Unit = Literal["count", "bytes"]


class Progress:
    """Progress of ``total`` units (battles, steps, bytes) labelled ``label``; a no-op when
    ``enabled`` is false."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        enabled: bool = True,
        unit: Unit = "count",
        start: int = 0,
        plain_lines: int = 10,
        live: bool | None = None,
    ) -> None:
        self.label = label
        self.total = max(int(total), 0)
        self.enabled = enabled
        self.unit = unit
        self.completed = start
        self.info = ""
        self.live = enabled and (sys.stderr.isatty() if live is None else live)
        self._every = max(1, self.total // max(plain_lines, 1))
        self._next_plain = self._plain_after(start)
        self._bar: Any = None
        if self.live:
            self._bar, self._task = _rich_bar(label, self.total, start, unit)

    def update(self, *, completed: int | None = None, advance: int = 0, info: str | None = None) -> None:
        """Set or advance the units done, optionally with a short status text."""
        if not self.enabled:
            return
        self.completed = completed if completed is not None else self.completed + advance
        if info is not None:
            self.info = info
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, info=self.info)
            return
        if self.completed >= self._next_plain:
            self._next_plain = self._plain_after(self.completed)
            print(self.plain_line(), file=sys.stderr, flush=True)

    def _plain_after(self, done: int) -> int:
        """The count at which the next plain line is due: the next multiple, or the total."""
        following = (done // self._every + 1) * self._every
        return following if done >= self.total or following < self.total else self.total

    def plain_line(self) -> str:
        """The line printed when stderr is not a terminal."""
        done = _bytes(self.completed) if self.unit == "bytes" else f"{self.completed:,}"
        total = _bytes(self.total) if self.unit == "bytes" else f"{self.total:,}"
        return f"{self.label} {done}/{total}" + (f" {self.info}" if self.info else "")

    def message(self, text: str) -> None:
        """A line on stderr that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _rich_bar(label: str, total: int, start: int, unit: Unit) -> tuple[Any, Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    amount = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    bar = RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *amount,
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task(label, total=total, completed=start, info="")
    bar.start()
    return bar, task


def _bytes(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def print_table(
    title: str,
    rows: Iterable[Sequence[str]],
    *,
    header: Sequence[str] | None = None,
    right: Sequence[str] = (),
    min_width: int | None = None,
) -> None:
    """A table on stdout: key/value rows when ``header`` is None, else columns named by it
    (those in ``right`` right-aligned and never wrapped)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=header is not None)
    if header is None:
        table.add_column("", style="bold")
        table.add_column("")
    else:
        for name in header:
            if name in right:
                table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
            else:
                table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    console = Console()
    if min_width is not None and console.width < min_width:
        console = Console(width=min_width)
    console.print(table)


def error_line(text: str) -> None:
    """One ``error: …`` line on stderr, never wrapped by a console width."""
    print(f"error: {text}", file=sys.stderr, flush=True)
