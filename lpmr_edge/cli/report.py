"""Commands that turn results into a decision: pick and report."""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import JsonOption, with_option_group
from lpmr_edge.cli.params import (
    EXISTING_PATH,
    LIMIT_MB,
    LIMIT_MS,
    MARGIN,
    OBJECTIVE,
    OUTPUT_DIR,
    PERCENTAGE_POINTS,
    RESAMPLES,
)
from lpmr_edge.cli.ui import console, print_error, print_json, print_table
from lpmr_edge.pick import Constraints

if TYPE_CHECKING:
    from lpmr_edge.pick import Choice

NO_CHOICE_EXIT = 3

ResultsArgument = Annotated[list[Path], typer.Argument(parser=EXISTING_PATH, help="Result directories (metrics.json + manifest.json), "
                                                       "folders holding them, and `lpmr-edge bench --json-out` "
                                                       "files (bench*.json below the folders are found too)")]


_CONSTRAINT_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                      annotation=Annotated[kind, typer.Option(parser=parser, help=text)])
    for name, kind, default, parser, text in (
        ("objective", str, "ece", OBJECTIVE, ("What to optimise: ece | nll | fpr95 (lower is better), auroc | accuracy | "
                                   "worst-group (higher is better); auroc:SET or auroc:worst for one OOD set")),
        ("max_latency_ms", float | None, None, LIMIT_MS, ("Largest median latency in ms (measured timings only; emulated "
                                                "ones never qualify)")),
        ("max_size_mb", float | None, None, LIMIT_MB, "Largest image-tower size in MB (2^20 bytes, as `lpmr-edge bench` reports)"),
        ("max_accuracy_drop", float | None, None, PERCENTAGE_POINTS, "Largest top-1 drop vs the FP32 reference, in percentage points"),
        ("margin", list[str] | None, None, MARGIN, ("Equivalence margin METRIC=VALUE of the paired decision "
                                                    "(repeatable): candidates within it of the best are tied. Defaults: "
                                                    "top1=0.5pp, ece=0.005, nll=0.01, auroc=0.005, fpr95=1pp, "
                                                    "worst_group=1pp")),
    )
]
with_constraint_options = with_option_group(_CONSTRAINT_PARAMETERS, "constraints", Constraints.from_options)
"""Add the picker's objective and constraints to a command; it receives them as ``constraints: Constraints``."""


def fail_without_choice(choices: Sequence[Choice]) -> None:
    """Exit with status 3 and a one-line message if some target has no recommendation."""
    from lpmr_edge.pick import NoFeasibleChoice, require_recommendations

    try:
        require_recommendations(choices)
    except NoFeasibleChoice as error:
        print_error(str(error))
        raise typer.Exit(NO_CHOICE_EXIT) from None


def print_choices(choices: Sequence[Choice]) -> None:
    """The picker's recommendation per target as a table, with the reason and Pareto alternatives."""
    from lpmr_edge.results import format_estimate

    if not choices:
        return
    spec = choices[0].objective
    rows = []
    for choice in choices:
        chosen = choice.recommended
        value = format_estimate(spec, chosen.metrics[spec.key]) if chosen else "—"
        latency = f"{chosen.measured_latency_ms:.2f}" if chosen and chosen.measured_latency_ms is not None else "—"
        pareto = ", ".join(f"{r.variant} ({r.measured_latency_ms:.2f} ms)" for r in choice.alternatives)
        rows.append([choice.target, chosen.variant if chosen else "none", value, latency, pareto or "—"])
    direction = "higher" if spec.higher_is_better else "lower"
    print_table(f"what to deploy, optimising {spec.label} ({direction} is better)",
                ["target", "deploy", spec.label, "latency ms", "Pareto alternatives"], rows)
    for choice in choices:
        console.print(f"why ({choice.target}): {choice.reason}", highlight=False)


@app.command("pick")
@with_constraint_options
def pick_command(
    results: ResultsArgument,
    json_output: JsonOption = False,
    *,
    constraints: Constraints,
) -> None:
    """Recommend the (runtime, precision) to deploy on each target, with the reason and the Pareto
    alternatives. Exit status 3 when nothing satisfies the constraints on some target, 2 on bad input."""
    from lpmr_edge.pick import pick
    from lpmr_edge.results import load_results

    choices = pick(load_results(results), constraints)
    if json_output:
        print_json([choice.to_json() for choice in choices])
    else:
        print_choices(choices)
    fail_without_choice(choices)


@app.command("report")
@with_constraint_options
def report_command(
    results: ResultsArgument,
    out: Annotated[Path, typer.Option(parser=OUTPUT_DIR, help="Report directory (an earlier report there is replaced)")] = Path(
        "lpmr-results/report"),
    resamples: Annotated[int | None, typer.Option(parser=RESAMPLES, help="Paired-bootstrap resamples per comparison (default: "
                                                  "each result's suite setting, usually 1000)")] = None,
    json_output: JsonOption = False,
    *,
    constraints: Constraints,
) -> None:
    """Write report.html (self-contained), report.md, report.json and plots/ from result directories.
    Every quantized result is compared with its FP32 reference by a paired bootstrap on the stored outputs."""
    from lpmr_edge.report import HTML_FILE, PairedComparator, write_report

    report = write_report(results, out, constraints, PairedComparator(resamples))
    summary = {"report": str(out / HTML_FILE), "recommendations": report["recommendations"],
               "claims": {claim["claim"]: claim["verdict"] for claim in report["claims"]}}
    if json_output:
        print_json(summary)
        return
    for choice in report["recommendations"]:
        chosen = choice["recommended"]
        console.print(f"{choice['target']}: {chosen['variant'] if chosen else 'nothing satisfies the constraints'}"
                      f" — {choice['reason']}")
    console.print(f"report: {summary['report']}")
