"""The ``lpmr-edge`` command line: a thin layer over the Python API.

The app lives in ``cli/app.py``; each area registers its commands on it from its own module
(``cli/commands.py`` imports them all). ``main`` turns every bad input — a bad option value or a
UserError — into one ``error:`` line and exit status 2, never a traceback.
"""
from __future__ import annotations

import os
import sys

import typer
from typer._click.exceptions import NoArgsIsHelpError  # typer 0.29 vendors click

from lpmr_edge.cli import commands  # noqa: F401  (registers the commands)
from lpmr_edge.cli.app import app
from lpmr_edge.errors import UserError

__all__ = ["BAD_INPUT_EXIT", "app", "main"]

BAD_INPUT_EXIT = 2
INTERRUPTED_EXIT = 130


def _one_line_error(message: str) -> int:
    typer.secho(f"error: {' '.join(message.split())}", err=True, fg="red")
    return BAD_INPUT_EXIT


def main(args: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m lpmr_edge`` (``args``: default ``sys.argv[1:]``)."""
    # OpenMP threads that spin while waiting starve each other on a shared CPU (20x slower seen on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        code = app(args=args, prog_name="lpmr-edge", standalone_mode=False)
    except NoArgsIsHelpError as help_request:
        help_request.show()
        code = 0
    except typer.TyperException as error:  # click's errors, vendored by Typer: usage errors have exit status 2
        code = getattr(error, "exit_code", 1)
        if code == BAD_INPUT_EXIT:
            _one_line_error(error.format_message())
        else:
            typer.secho(f"error: {error.format_message()}", err=True, fg="red")
    except UserError as error:
        code = _one_line_error(str(error))
    except (KeyboardInterrupt, typer.Abort):
        code = INTERRUPTED_EXIT
    if code == INTERRUPTED_EXIT:
        typer.secho("interrupted; results written so far are kept, re-run to resume", err=True, fg="yellow")
    sys.exit(code if isinstance(code, int) else 0)
