"""`lpmr-edge tune`: reliability-aware quantization search (``lpmr_edge.tune``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import JsonOption
from lpmr_edge.cli.params import (
    DURATION,
    ENGINE,
    EXPORT_RUNTIME,
    FRACTION,
    LATENCY_RATIO,
    LIMIT_MS,
    MODEL_SPEC,
    OUTPUT_DIR,
    PERCENTAGE_POINTS,
    POSITIVE_INT,
    RAY_ADDRESS,
    SEED,
    SUITE,
    TARGET,
    TUNE_OBJECTIVE,
)
from lpmr_edge.cli.ui import console, print_json

DEFAULT_ROOT = Path("lpmr-results/tune")


@app.command("tune")
def tune_command(
    model: Annotated[str, typer.Option("--model", "-m", parser=MODEL_SPEC, help="Model spec")] = "lpmr-tiny-fmnist",
    target: Annotated[str, typer.Option(parser=TARGET, help="Target name or file")] = "x86",
    runtime: Annotated[str, typer.Option(parser=EXPORT_RUNTIME, help="openvino | executorch")] = "openvino",
    objective: Annotated[str, typer.Option(parser=TUNE_OBJECTIVE, help="ece | nll | top1 | auroc:SET | auroc:worst | "
                                           "worst_group")] = "ece",
    max_latency_ratio: Annotated[float | None, typer.Option(parser=LATENCY_RATIO, help="At most this x uniform INT8's "
                                                            "measured latency")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(parser=LIMIT_MS, help="At most this image-tower latency")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(parser=PERCENTAGE_POINTS, help="At most this many top-1 "
                                                            "points below uniform FP32 (validation)")] = None,
    budget: Annotated[float | None, typer.Option(parser=DURATION, help="Search time (30m, 1h): no new stage "
                                                 "starts after it")] = None,
    suite: Annotated[str, typer.Option(parser=SUITE, help="Suite whose sets are split (trimmed to the objective's "
                                       "families); auroc and worst_group need quick or full")] = "basic",
    limit: Annotated[int, typer.Option(parser=POSITIVE_INT, help="Images per set before the split")] = 2000,
    validation_fraction: Annotated[float, typer.Option(parser=FRACTION, help="Share of each set used for "
                                                       "tuning decisions; the rest is the test split")] = 0.5,
    seed: Annotated[int, typer.Option(parser=SEED, help="Split and bootstrap seed")] = 0,
    accuracy_control: Annotated[bool, typer.Option(help="OpenVINO: run NNCF's accuracy control with the objective "
                                                   "(ece, nll, top1) as its validation function")] = True,
    sensitivity: Annotated[bool, typer.Option(help="Run the per-block FP sensitivity and combined stages")] = True,
    engine: Annotated[str, typer.Option(parser=ENGINE, help="Where trials run: local (process pool) | ray")] = "local",
    workers: Annotated[int, typer.Option(parser=POSITIVE_INT, help="Trials at once (1: in this process)")] = 1,
    address: Annotated[str | None, typer.Option(parser=RAY_ADDRESS, help="Ray cluster HOST:PORT")] = None,
    out: Annotated[Path | None, typer.Option(parser=OUTPUT_DIR, help="Tune directory (default lpmr-results/tune/"
                                             "MODEL-TARGET-RUNTIME); re-running resumes its trials")] = None,
    json_output: JsonOption = False,
) -> None:
    """Search quantization settings and layers kept in FP for the most reliable deployment within the
    constraints; decided on a validation split, reported on a disjoint test split against uniform INT8."""
    from lpmr_edge.targets import load_target
    from lpmr_edge.tune import SearchSpace, Splits, TuneConstraints, TuneRequest, tune

    loaded = load_target(target)
    directory = out or DEFAULT_ROOT / re.sub(r"[^\w.-]+", "_", f"{model}-{loaded.name}-{runtime}")
    request = TuneRequest(model=model, target=loaded, runtime=runtime, objective=objective,
                          constraints=TuneConstraints(max_latency_ratio, max_latency_ms, max_accuracy_drop),
                          budget_seconds=budget, out=directory, suite=suite, limit=limit,
                          splits=Splits(validation_fraction, seed), space=SearchSpace(accuracy_control=accuracy_control, sensitivity=sensitivity),
                          engine=engine, workers=workers, address=address)
    record = tune(request, log=(lambda message: None) if json_output else console.print)
    if json_output:
        print_json({key: record[key] for key in ("verdict", "chosen", "test", "decision", "search_seconds",
                                                 "pareto_plot")} | {"tune": str(directory / "tune.json")})
        return
    console.print(f"verdict: {record['verdict']}")
    console.print(f"searched {record['trials']['tried']} configurations ({record['trials']['resumed']} resumed) in "
                  f"{record['search_seconds']:.0f} s; plot: {record['pareto_plot']}; record: {directory / 'tune.json'}")
