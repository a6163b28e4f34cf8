"""Shared console helpers: progress bars, JSON output, tables."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def print_json(value: Any) -> None:
    """Machine-readable output on stdout (nothing else goes to stdout with --json)."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table on stderr (text shown literally, never read as rich markup)."""
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{cell:.4f}" if isinstance(cell, float) else escape(str(cell)) for cell in row])
    console.print(table)
