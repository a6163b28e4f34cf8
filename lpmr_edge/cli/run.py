"""`lpmr-edge run`: calibrate → export → parity → suite → bench → report → pick, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import DeviceOption, JsonOption, with_settle_options
from lpmr_edge.cli.params import MODEL_SPEC, OUTPUT_DIR, POSITIVE_INT, SUITE, TARGET
from lpmr_edge.cli.report import fail_without_choice, print_choices, with_constraint_options
from lpmr_edge.cli.ui import LiveProgress, console, print_json
from lpmr_edge.pick import Constraints
from lpmr_edge.sequential import SettleSettings


@app.command("run")
@with_constraint_options
@with_settle_options
def run_command(
    model: Annotated[str, typer.Option("--model", "-m", parser=MODEL_SPEC, help="Model spec")] = "lpmr-tiny-fmnist",
    target: Annotated[list[str] | None, typer.Option("--target", "-t", parser=TARGET, help="Target name or .toml (repeatable; default x86)")] = None,
    suite: Annotated[str, typer.Option(parser=SUITE, help="quick | full | basic | path to a suite .toml")] = "quick",
    device: DeviceOption = "local",
    out: Annotated[Path, typer.Option(parser=OUTPUT_DIR, help="Run directory (re-running resumes it)")] = Path("lpmr-results/run"),
    jobs: Annotated[int | None, typer.Option(parser=POSITIVE_INT, help="Steps run at once (default: one per core); steps share the cores by their threads, benches run alone; 1: one after another")] = None,
    json_output: JsonOption = False,
    *,
    constraints: Constraints,
    until: SettleSettings | None,
) -> None:
    """From model to decision in one command; every finished, verified step is skipped on a re-run.
    With --until-settled, each target's artifacts are evaluated together until the decision is settled.
    Independent steps (exports, suites of different artifacts, the host reference) run concurrently."""
    from lpmr_edge.pipeline import RunPlan, run

    plan = RunPlan(model=model, targets=tuple(target or ["x86"]), out=out, suite=suite, device=device,
                   constraints=constraints, until=until, jobs=jobs)
    with LiveProgress() as progress:
        outcome = run(plan, log=progress.log, progress=progress.task)
    choices = outcome.choices
    if json_output:
        print_json({"report": str(out / "report" / "report.html"),
                    "recommendations": [choice.to_json() for choice in choices],
                    **({"sequential": {target: settled.describe() for target, settled in outcome.settled.items()}}
                       if until is not None else {})})
    else:
        print_choices(choices)
        for target_name, settled in outcome.settled.items():
            console.print(f"sequential ({target_name}): {settled.summary()}", highlight=False)
        console.print(f"report: {out / 'report' / 'report.html'}", highlight=False)
    fail_without_choice(choices)
