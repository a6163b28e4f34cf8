"""The Typer application every command module registers on (``lpmr_edge.cli.commands`` imports them all).

It imports no command module, so command modules can import it without a cycle.
"""
from __future__ import annotations

import typer

app = typer.Typer(name="lpmr-edge", help="Less precise, more reliable: measure what quantization does to CLIP "
                  "reliability, on the device, through the runtime that ships.", no_args_is_help=True,
                  rich_markup_mode="rich", pretty_exceptions_enable=False)
