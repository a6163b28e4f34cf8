"""Commands of the reliability suite: compare (paired deltas against a reference) and spectrum."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import JsonOption, format_interval
from lpmr_edge.cli.params import EXISTING_DIR, FRACTION, OUTPUT_FILE, RESAMPLES, SEED
from lpmr_edge.cli.ui import console, print_json, print_table

ResultsArgument = Annotated[Path, typer.Argument(parser=EXISTING_DIR, help="Results directory of `lpmr-edge eval` (e.g. the INT8 one)")]
ReferenceOption = Annotated[Path, typer.Option("--reference", "-r", parser=EXISTING_DIR, help="Results directory of the FP32 reference, "
                                                                        "same suite and samples")]
HeadFractionOption = Annotated[float, typer.Option(parser=FRACTION, help="Share of the top ranks counted as the spectral head")]


def _describe(identity: dict) -> str:
    return f"{identity['model']} via {identity['runtime']} {identity['executed_precision']}"


@app.command("compare")
def compare_command(
    results: ResultsArgument,
    reference: ReferenceOption,
    resamples: Annotated[int | None, typer.Option(parser=RESAMPLES, help="Bootstrap resamples (default: the suite's)")] = None,
    seed: Annotated[int | None, typer.Option(parser=SEED, help="Bootstrap seed (default: the result's)")] = None,
    head_fraction: HeadFractionOption = 0.1,
    json_output: JsonOption = False,
) -> None:
    """Paired comparison with the FP32 reference: deltas with 95% CIs, McNemar, spectral summary."""
    from lpmr_edge.compare import compare

    comparison = compare(results, reference, resamples, seed, head_fraction)
    if json_output:
        print_json(comparison)
        return
    print_table(f"{_describe(comparison['result'])} vs {_describe(comparison['reference'])} "
                f"(delta = result - reference)", ["metric", "reference", "result", "delta", "95% CI", "verdict"],
                [[delta["label"], delta["reference"], delta["result"], delta["delta"], format_interval(delta["ci"]),
                  delta["verdict"]] for delta in comparison["deltas"].values()])
    for name, test in comparison["mcnemar"].items():
        console.print(f"McNemar ({name}): result alone correct on {test['only_result_correct']}, reference alone "
                      f"on {test['only_reference_correct']}; exact p = {test['p_value']:.4g}")
    spectrum = comparison["spectrum"]
    console.print(f"spectrum: {spectrum['residual_tail_share']:.1%} of the residual energy in the tail "
                  f"(FP32 variance there: {spectrum['reference_tail_share']:.1%}); tail gain "
                  f"{spectrum['tail_gain']:.3f}; details: `lpmr-edge spectrum`")


@app.command("spectrum")
def spectrum_command(
    results: ResultsArgument,
    reference: ReferenceOption,
    head_fraction: HeadFractionOption = 0.1,
    plot: Annotated[Path | None, typer.Option(parser=OUTPUT_FILE, help="PNG path (default: RESULTS/spectrum.png)")] = None,
    json_output: JsonOption = False,
) -> None:
    """Where the quantization residual lives in the FP32 feature spectrum; writes spectrum.json and a PNG."""
    from lpmr_edge.manifest import atomic_write_json
    from lpmr_edge.results import read_result
    from lpmr_edge.suite.families.spectrum import plot_spectrum, spectrum_of_results

    diagnostic = spectrum_of_results(results, reference, head_fraction)
    plot = plot or results / "spectrum.png"
    title = f"{_describe(read_result(results).raw)} vs {_describe(read_result(reference).raw)}"
    plot_spectrum(diagnostic, plot, title)
    atomic_write_json(results / "spectrum.json", diagnostic)
    if json_output:
        print_json({**diagnostic, "plot": str(plot)})
        return
    ranks = diagnostic["effective_rank"]
    print_table(f"{title}: clean ID features, {diagnostic['head_ranks']} of {diagnostic['ranks']} ranks in the head",
                ["quantity", "value"],
                [["residual energy share in head", diagnostic["residual_head_share"]],
                 ["residual energy share in tail", diagnostic["residual_tail_share"]],
                 ["FP32 variance share in tail", diagnostic["reference_tail_share"]],
                 ["spectral gain, head (quantized / FP32 variance)", diagnostic["head_gain"]],
                 ["spectral gain, tail", diagnostic["tail_gain"]],
                 ["relative residual norm", diagnostic["relative_residual_norm"]],
                 ["effective rank FP32", ranks["reference"]], ["effective rank result", ranks["result"]]])
    console.print(f"plot: {plot}")
