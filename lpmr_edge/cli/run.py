"""`lpmr-edge run`: calibrate → export → parity → suite → bench → report → pick, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import DeviceOption, JsonOption
from lpmr_edge.cli.params import MODEL_SPEC, OUTPUT_DIR, SUITE, TARGET
from lpmr_edge.cli.report import fail_without_choice, print_choices, with_constraint_options
from lpmr_edge.cli.ui import LiveProgress, console, print_json
from lpmr_edge.pick import Constraints


@app.command("run")
@with_constraint_options
def run_command(
    model: Annotated[str, typer.Option("--model", "-m", parser=MODEL_SPEC, help="Model spec")] = "lpmr-tiny-fmnist",
    target: Annotated[list[str] | None, typer.Option("--target", "-t", parser=TARGET, help="Target name or .toml (repeatable; default x86)")] = None,
    suite: Annotated[str, typer.Option(parser=SUITE, help="quick | full | basic | path to a suite .toml")] = "quick",
    device: DeviceOption = "local",
    out: Annotated[Path, typer.Option(parser=OUTPUT_DIR, help="Run directory (re-running resumes it)")] = Path("lpmr-results/run"),
    json_output: JsonOption = False,
    *,
    constraints: Constraints,
) -> None:
    """From model to decision in one command; every finished, verified step is skipped on a re-run."""
    from lpmr_edge.pipeline import RunPlan, run

    plan = RunPlan(model=model, targets=tuple(target or ["x86"]), out=out, suite=suite, device=device,
                   constraints=constraints)
    with LiveProgress() as progress:
        choices = run(plan, log=progress.log, progress=progress.task)
    if json_output:
        print_json({"report": str(out / "report" / "report.html"),
                    "recommendations": [choice.to_json() for choice in choices]})
    else:
        print_choices(choices)
        console.print(f"report: {out / 'report' / 'report.html'}", highlight=False)
    fail_without_choice(choices)
