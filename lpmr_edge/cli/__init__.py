"""The ``lpmr-edge`` command line: a thin layer over the Python API.

The app lives in ``cli/app.py``; each area registers its commands on it from its own module
(``cli/commands.py`` imports them all); every command turns a UserError into a
one-line message and exit status 2, never a traceback.
"""
from __future__ import annotations

import os
import sys

import typer

from lpmr_edge import quiet_libraries
from lpmr_edge.cli import commands  # noqa: F401  (registers the commands)
from lpmr_edge.cli.app import app
from lpmr_edge.errors import UserError

__all__ = ["app", "main"]


def _configure_process() -> None:
    quiet_libraries()
    # OpenMP threads that spin while waiting starve each other on a shared CPU (20x slower seen on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    """Entry point of the console script and ``python -m lpmr_edge``."""
    _configure_process()
    try:
        app()
    except UserError as error:
        typer.secho(f"error: {error}", err=True, fg="red")
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; results written so far are kept, re-run to resume", err=True, fg="yellow")
        sys.exit(130)
