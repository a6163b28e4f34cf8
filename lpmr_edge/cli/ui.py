"""Shared console helpers: progress bars, JSON output, tables."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, Self, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)


@contextlib.contextmanager
def console_writing_to(stream: TextIO) -> Iterator[None]:
    """lpmr-edge's console (tables, progress, warnings, its own error lines) writes to ``stream`` for the
    duration (the visible terminal while library output is captured)."""
    console.file = stream
    try:
        yield
    finally:
        console.file = None  # back to whatever sys.stderr is


def print_error(message: str) -> None:
    """An ``error:`` line on the console."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _progress_display() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    with _progress_display() as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


class LiveProgress:
    """One live display for a long command: each ``task(label, total)`` adds a bar (removed when its context
    ends), nested tasks show under the outer ones, and ``log`` prints above the bars."""

    def __init__(self) -> None:
        self.display = _progress_display()

    def __enter__(self) -> Self:
        self.display.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.display.stop()

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar for ``total`` units; yields ``advance(n)``."""
        task = self.display.add_task(label, total=total)
        try:
            yield lambda n: self.display.advance(task, n)
        finally:
            self.display.remove_task(task)

    def log(self, message: str) -> None:
        """A line above the bars, printed as is (no markup, no wrapping of long paths)."""
        self.display.console.print(message, markup=False, highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    """Machine-readable output on stdout (nothing else goes to stdout with --json)."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str), flush=True)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table on stderr (text shown literally, never read as rich markup)."""
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{cell:.4f}" if isinstance(cell, float) else escape(str(cell)) for cell in row])
    console.print(table)
