"""Commands of the deployment path: targets, calibrate, export, check, bench."""
from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from lpmr_edge.backends import runtime_help
from lpmr_edge.cli.app import app
from lpmr_edge.cli.core import ArtifactOption, DeviceOption, JsonOption, ModelOption, with_option_group
from lpmr_edge.cli.params import (
    DATASET,
    EXISTING_DIR,
    EXPORT_RUNTIME,
    GROUP_SIZE,
    OUTPUT_DIR,
    OUTPUT_FILE,
    POSITIVE_INT,
    POSITIVE_SECONDS,
    PRECISION,
    PRESET,
    SEED,
    SHARE,
    SMOOTH_QUANT_ALPHA,
    TARGET,
    TOWER,
)
from lpmr_edge.cli.ui import console, print_json, print_table
from lpmr_edge.errors import UserError
from lpmr_edge.quantize import QuantizationOptions

DEFAULTS = QuantizationOptions()
TargetOption = Annotated[str, typer.Option("--target", "-t", parser=TARGET, help="Target name (targets/NAME.toml) or path to a "
                                           ".toml file")]
ThreadsOption = Annotated[int | None, typer.Option(parser=POSITIVE_INT, help="Runtime threads (default: the artifact's target)")]
_CALIBRATION_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(DEFAULTS, name),
                      annotation=Annotated[kind, typer.Option(*flags, help=text, **checked)])
    for name, kind, flags, checked, text in (
        ("calibration", str, (), {"parser": DATASET},
         "Calibration set: calib:NAME (calibration_data/), folder:PATH or a folder"),
        ("subset_size", int, (), {"parser": POSITIVE_INT}, "Calibration images to use (seeded subset)"),
        ("preset", str, (), {"parser": PRESET},
         "NNCF preset: mixed (asymmetric activations) or performance (symmetric)"),
        ("transformer", bool, ("--transformer/--no-transformer",), {},
         "NNCF model_type=TRANSFORMER (enables SmoothQuant)"),
        ("smooth_quant_alpha", float, (), {"parser": SMOOTH_QUANT_ALPHA}, "SmoothQuant alpha for MatMuls (-1 disables)"),
        ("fast_bias_correction", bool, ("--fast-bias-correction/--full-bias-correction",), {},
         "Bias correction method"),
        ("seed", int, (), {"parser": SEED}, "Seed of the calibration subset"),
    )
]


with_calibration_options = with_option_group(_CALIBRATION_PARAMETERS, "options", QuantizationOptions)
"""Add the calibration options to a command; it receives them as ``options: QuantizationOptions``."""


def _log(message: str) -> None:
    console.print(escape(message))


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


@app.command("targets")
def targets_command(json_output: JsonOption = False) -> None:
    """List deployment targets (targets/*.toml): architecture, threads, batches, runtimes and precisions."""
    from lpmr_edge.targets import TARGETS_DIR, list_targets

    targets = list_targets()
    if json_output:
        print_json([{**target.describe(), "source": target.source} for target in targets])
        return
    print_table(f"targets in {TARGETS_DIR}", ["name", "arch", "threads", "batch (image/text)", "runtime: precisions"],
                [[target.name, target.arch, target.threads, f"{target.image_batch}/{target.text_batch}",
                  "; ".join(f"{name}: {', '.join(entry.precisions)}" for name, entry in target.runtimes.items())]
                 for target in targets])


@app.command("calibrate")
@with_calibration_options
def calibrate_command(model: ModelOption = None, json_output: JsonOption = False, *,
                      options: QuantizationOptions = DEFAULTS) -> None:
    """NNCF INT8 post-training quantization of both towers (OpenVINO), cached for `export`.

    Reports, per tower, calibration time, quantizers inserted, and INT8 against FP32 on the calibration inputs.
    """
    from lpmr_edge.models import load_model
    from lpmr_edge.runtimes.openvino.export import calibrate

    if model is None:
        raise UserError("calibrate needs --model (e.g. --model lpmr-tiny-fmnist)")
    report = calibrate(load_model(model), options)
    if json_output:
        print_json(report)
        return
    calibration = report["calibration"]
    print_table(f"{report['model']['spec']} ({report['model']['label']}): INT8 vs FP32 on {calibration['name']} "
                f"({calibration['n']} images, {calibration['n_prompts']} prompts, sha256 {calibration['sha256'][:12]})",
                ["tower", "samples", "seconds", "CPU s", "quantizers", "cos mean", "cos min", "max |diff|", "cached"],
                [[tower, row["samples"], row["seconds"], row["cpu_seconds"], row["fake_quantize_nodes"], row["cosine_mean"],
                  row["cosine_min"], row["max_abs_diff"], row["cached"]] for tower, row in report["towers"].items()])


@app.command("export")
@with_calibration_options
def export_command(
    target: TargetOption,
    model: ModelOption = None,
    runtime: Annotated[list[str] | None, typer.Option(parser=EXPORT_RUNTIME, help="Runtime(s) to export (default: all of the "
                                                         "target's)")] = None,
    precision: Annotated[list[str] | None, typer.Option(parser=PRECISION,
                                                        help="Precision(s) (default: the target's list; "
                                                        f"{runtime_help()})")] = None,
    out: Annotated[Path, typer.Option(parser=OUTPUT_DIR, help="Artifacts root (<out>/<target>/<runtime>-<precision>)")] =
        Path("lpmr-results/artifacts"),
    dynamic_batch: Annotated[bool, typer.Option(help="Dynamic batch dimension instead of the target's static "
                                                "batch")] = False,
    fuse_head: Annotated[bool, typer.Option(help="OpenVINO: add the zero-shot head (calibration set classes) so "
                                            "the image graph also outputs logits")] = False,
    group_size: Annotated[int, typer.Option(parser=GROUP_SIZE, help="INT4 weight-only: weights per quantization "
                                            "group (-1: per channel)")] =
        DEFAULTS.group_size,
    ratio: Annotated[float, typer.Option(parser=SHARE, help="INT4 weight-only: share of layers in INT4 (rest INT8)")] =
        DEFAULTS.ratio,
    force: Annotated[bool, typer.Option(help="Re-export even when an up-to-date artifact exists")] = False,
    json_output: JsonOption = False,
    *,
    options: QuantizationOptions = DEFAULTS,
) -> None:
    """Export both towers for a target at each precision, with a verified manifest per artifact."""
    from lpmr_edge.export import export_target
    from lpmr_edge.manifest import read_json
    from lpmr_edge.targets import load_target

    if model is None:
        raise UserError("export needs --model (e.g. --model lpmr-tiny-fmnist)")
    paths = export_target(model, load_target(target), runtimes=runtime, precisions=precision, out_root=out,
                          options=replace(options, group_size=group_size, ratio=ratio),
                          dynamic_batch=dynamic_batch, fuse_head=fuse_head, force=force, log=_log)
    manifests = [read_json(path / "manifest.json", "artifact manifest") for path in paths]
    if json_output:
        print_json([{"path": str(path), "runtime": manifest["runtime"], "precision": manifest["precision"],
                     "runtime_config": manifest["runtime_config"], "towers": manifest["towers"],
                     "warnings": manifest["warnings"]} for path, manifest in zip(paths, manifests)])
        return
    artifacts_by_warning: dict[str, list[str]] = {}
    for path, manifest in zip(paths, manifests):
        for warning in manifest["warnings"]:
            artifacts_by_warning.setdefault(warning, []).append(path.name)
    _print_warnings([f"{warning} [{', '.join(names)}]" for warning, names in artifacts_by_warning.items()])


@app.command("check")
def check_command(
    artifact: ArtifactOption = None,
    n: Annotated[int, typer.Option("--n", parser=POSITIVE_INT, help="Images to compare")] = 256,
    dataset: Annotated[str, typer.Option(parser=DATASET, help="Labelled dataset name or folder")] = "fmnist-test",
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Parity of an artifact (any runtime) with the torch FP32 reference: cosine, max diff, top-1 agreement."""
    from lpmr_edge.parity import check_parity

    if artifact is None:
        raise UserError("check needs --artifact DIR (an exported artifact directory)")
    result = check_parity(artifact, n=n, dataset=dataset, threads=threads)
    if json_output:
        print_json(result)
        return
    print_table(f"{result['model']} ({result['model_label']}) via {result['runtime']} {result['precision']} "
                f"(executed: {result['executed_precision']}, {result['threads']} threads) vs torch fp32, "
                f"{result['n']} images of {result['dataset']}",
                ["tower", "cos mean", "cos min", "max |diff|", "relative max diff"],
                [[tower, result[tower]["cosine_mean"], result[tower]["cosine_min"], f"{result[tower]['max_abs_diff']:.3g}",
                  f"{result[tower]['relative_max_diff']:.3g}"] for tower in ("image", "text")])
    console.print(f"zero-shot top-1 agreement {result['top1_agreement']:.4f} (top-1 torch "
                  f"{result['top1_reference']:.4f}, artifact {result['top1_candidate']:.4f})")
    if "fused_head" in result:
        head = result["fused_head"]
        console.print(f"fused head logits: max |diff| {head['max_abs_diff']:.3g}, top-1 agreement "
                      f"{head['top1_agreement']:.4f}")
    _print_warnings(result["warnings"])


@app.command("bench")
@with_calibration_options
def bench_command(
    artifact: Annotated[list[Path] | None, typer.Option("--artifact", "-a", parser=EXISTING_DIR,
                                                        help="Artifact directory to time "
                                                           "(repeatable; any runtime)")] = None,
    model: ModelOption = None,
    target: Annotated[str | None, typer.Option("--target", "-t", parser=TARGET, help="With --model: export (or reuse) the "
                                                  "target's artifacts at each --batch, then time them")] = None,
    runtime: Annotated[list[str] | None, typer.Option(parser=EXPORT_RUNTIME,
                                                      help="With --model: runtime(s) to export")] = None,
    precision: Annotated[list[str] | None, typer.Option(parser=PRECISION,
                                                        help="With --model: precision(s) to export")] = None,
    torch_reference: Annotated[bool, typer.Option("--torch", help="Also time the torch FP32 eager reference")] = False,
    tower: Annotated[list[str] | None, typer.Option(parser=TOWER, help="What to time (repeatable): image, text, or zero-shot "
                                                    "(image tower + scores against --classes cached class "
                                                    "embeddings); default image")] = None,
    classes: Annotated[int, typer.Option(parser=POSITIVE_INT, help="zero-shot: number of cached class embeddings")] = 1000,
    batch: Annotated[list[int] | None, typer.Option(parser=POSITIVE_INT, help="Batch size(s); static artifacts run at their own")]
        = None,
    threads: ThreadsOption = None,
    repeats: Annotated[int, typer.Option(parser=POSITIVE_INT, help="Timed calls per runtime and batch (at most)")] = 50,
    max_seconds: Annotated[float, typer.Option(parser=POSITIVE_SECONDS, help="Time budget per runtime and batch")] = 20.0,
    out: Annotated[Path, typer.Option(parser=OUTPUT_DIR, help="Artifacts root for --model exports")] = Path("lpmr-results/artifacts"),
    json_out: Annotated[Path | None, typer.Option(parser=OUTPUT_FILE, help="Also write the JSON report to this file")] = None,
    json_output: JsonOption = False,
    device: DeviceOption = "local",
    *,
    options: QuantizationOptions = DEFAULTS,
) -> None:
    """Median/p90/p99 latency, throughput, peak RSS and speed-up over fp32, interleaved across runtimes
    (on a --device: one artifact after another, each static batch timed by the device itself)."""
    from lpmr_edge.bench import BenchSettings, RuntimeSource, benchmark_towers
    from lpmr_edge.manifest import atomic_write_json

    towers = tower or ["image"]
    settings = BenchSettings(tower=towers[0], batches=tuple(batch or (1, 32)), threads=threads, repeats=repeats,
                             max_seconds=max_seconds, classes=classes)
    for name in towers[1:]:
        BenchSettings(tower=name)  # validates the name before anything is exported or timed
    paths = list(artifact or [])
    if model is not None and target is not None:
        paths += _bench_artifacts(model, target, runtime, precision, settings.batches, out, options)
    sources = [RuntimeSource(artifact=str(path)) for path in paths]
    reference_model = model or (_artifact_model(paths[0]) if paths else None)
    if torch_reference and reference_model:
        sources.append(RuntimeSource(model=reference_model))
    report = benchmark_towers(sources, settings, towers, device, log=_log)
    if json_out is not None:
        atomic_write_json(json_out, report)
    if json_output:
        print_json(report)
        return
    machine = report["machine"]
    where = f"{machine['cpu']} ({machine['arch']}, {machine['cores']} cores, {machine['node']})"
    if "device" in report:
        where = f"device {report['device']['label']}" + (" (emulated: not latencies)" if report["device"]["emulated"]
                                                         else "")
    console.print(f"timed on {where}; latency per call, throughput at that batch, peak RSS of the runtime's process",
                  highlight=False)
    for row in report["results"]:
        size = f", {row['artifact_mb']} MB on disk" if row["artifact_mb"] is not None else ""
        console.print(escape(
            f"{row['tower']}: {row['model']} {row['runtime']} {row['precision']} (executed: {row['executed_precision']}) "
            f"batch {row['batch']}, {row['threads']} threads: median {row['median_ms']:.1f} ms, p90 {row['p90_ms']:.1f}, "
            f"p99 {row['p99_ms']:.1f} ({row['calls']} calls), {row['throughput_per_s']:.1f} items/s, "
            f"peak RSS {row['peak_rss_mb']} MB{size}"))
    for speedup in report["speedups"]:
        runtime = speedup["runtime"] + (f" ({speedup['delegate']} delegate)" if speedup.get("delegate") else "")
        console.print(f"{speedup['tower']}: {runtime} {speedup['precision']} vs {runtime} fp32, batch "
                      f"{speedup['batch']}, {settings.threads or 'target'} threads: {speedup['speedup_over_fp32']:.2f}x "
                      "(median latency, same interleaved run)")


def _artifact_model(path: Path) -> str:
    from lpmr_edge.manifest import read_json

    return read_json(path / "manifest.json", "artifact manifest")["model"]["spec"]


def _bench_artifacts(model: str, target_name: str, runtimes: list[str] | None, precisions: list[str] | None,
                     batches: tuple[int, ...], out: Path, options: QuantizationOptions) -> list[Path]:
    """Export (or reuse) the target's artifacts with the image tower at each batch size."""
    from lpmr_edge.export import export_target, with_image_batch
    from lpmr_edge.targets import load_target

    target = load_target(target_name)
    paths: list[Path] = []
    for size in batches:
        variant = target if size == target.image_batch else with_image_batch(target, size)
        paths += export_target(model, variant, runtimes=runtimes, precisions=precisions, out_root=out,
                               options=options, log=_log)
    return paths
