"""The Typer application every command module registers on (``lpmr_edge.cli.commands`` imports them all),
and its global options.

It imports no command module, so command modules can import it without a cycle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpmr_edge.cli.params import OUTPUT_FILE
from lpmr_edge.cli.ui import console_writing_to
from lpmr_edge.quiet import captured_output, default_log_path

app = typer.Typer(name="lpmr-edge", help="Less precise, more reliable: measure what quantization does to CLIP "
                  "reliability, on the device, through the runtime that ships.", no_args_is_help=True,
                  rich_markup_mode="rich", pretty_exceptions_enable=False)


@app.callback()
def global_options(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the libraries' own output (runtime C++ "
                                          "messages, dependency warnings, NNCF progress) instead of keeping it "
                                          "in the log file")] = False,
    log_file: Annotated[Path | None, typer.Option(parser=OUTPUT_FILE, help="Where library output is kept "
                                                  "(default: $LPMR_EDGE_LOG or lpmr-results/lpmr-edge.log)")]
        = None,
) -> None:
    """Options of every command (give them before the command's name)."""
    if not verbose:
        capture = ctx.with_resource(captured_output(log_file or default_log_path(),
                                                    f"lpmr-edge {ctx.invoked_subcommand}"))
        ctx.with_resource(console_writing_to(capture.stderr))
