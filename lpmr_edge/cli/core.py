"""Commands of the foundation: eval, models, datasets, train-standin."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lpmr_edge.cli import app
from lpmr_edge.cli.ui import console, print_json, print_table, progress_bar

ModelOption = Annotated[Optional[str], typer.Option("--model", "-m", help="Model spec: lpmr-tiny-fmnist, "
                                                    "random:ARCH, ARCH:TAG or ARCH:/path/to/weights")]
ArtifactOption = Annotated[Optional[Path], typer.Option("--artifact", "-a", help="Exported artifact directory")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout")]


def default_results_dir(runtime: str, precision: str, model: str) -> Path:
    """Where results go when --out is not given."""
    slug = model.replace(":", "_").replace("/", "_")
    return Path("lpmr-results") / "eval" / f"{slug}-{runtime}-{precision}"


@app.command("eval")
def eval_command(
    model: ModelOption = None,
    runtime: Annotated[Optional[str], typer.Option(help="torch | openvino | executorch "
                                                   "(default: torch, or the artifact's runtime)")] = None,
    artifact: ArtifactOption = None,
    dataset: Annotated[str, typer.Option(help="Dataset name or folder")] = "fmnist-test",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N images")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch")] = 64,
    threads: Annotated[Optional[int], typer.Option(help="Runtime threads (default: all cores)")] = None,
    skip_bad_images: Annotated[bool, typer.Option(help="Skip unreadable images (counted) instead of failing")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Results directory")] = None,
    json_output: JsonOption = False,
) -> None:
    """Zero-shot evaluation through a runtime; writes per-sample outputs and metrics."""
    from lpmr_edge.runtimes import open_runtime
    from lpmr_edge.suite import EvalSettings, evaluate

    engine = open_runtime(runtime, model=model, artifact=artifact, threads=threads)
    description = engine.describe()
    out = out or default_results_dir(engine.name, description["precision"], engine.model_info["spec"])
    settings = EvalSettings(dataset=dataset, limit=limit, batch_size=batch_size, skip_bad_images=skip_bad_images)
    result = evaluate(engine, out, settings, progress=progress_bar)
    accuracy = result["metrics"]["accuracy"]
    summary = {"top1": accuracy["top1"], "top5": accuracy["top5"], "n": result["n"], "model": result["model"],
               "model_label": result["model_label"], "runtime": result["runtime"],
               "precision": result["precision"], "executed_precision": result["executed_precision"],
               "results_dir": str(out)}
    if json_output:
        print_json(summary)
        return
    print_table(f"{result['model']} ({result['model_label']}) via {result['runtime']} "
                f"[{result['executed_precision']}]", ["dataset", "n", "top-1", "top-5"],
                [[dataset, result["n"], accuracy["top1"], accuracy["top5"]]])
    console.print(f"results: {out}")


@app.command("models")
def models_command(json_output: JsonOption = False) -> None:
    """List bundled stand-ins and the open_clip architectures and pretrained tags."""
    from lpmr_edge._compat import import_open_clip
    from lpmr_edge.models.bundled import BUNDLED_MODELS

    open_clip = import_open_clip()
    listing = {"bundled": {name: model.description for name, model in BUNDLED_MODELS.items()},
               "pretrained": [f"{arch}:{tag}" for arch, tag in open_clip.list_pretrained()],
               "architectures": [name for name in open_clip.list_models() if name not in BUNDLED_MODELS]}
    if json_output:
        print_json(listing)
        return
    print_table("bundled stand-ins (not pretrained CLIPs)", ["name", "description"],
                [[name, text] for name, text in listing["bundled"].items()])
    console.print(f"{len(listing['architectures'])} open_clip architectures (use random:ARCH) and "
                  f"{len(listing['pretrained'])} pretrained tags (ARCH:TAG); `--json` lists them all")


@app.command("datasets")
def datasets_command(json_output: JsonOption = False) -> None:
    """List the dataset registry and shipped calibration sets."""
    from lpmr_edge.data import DATASET_NAMES
    from lpmr_edge.data.registry import calibration_set_names

    listing = {"datasets": list(DATASET_NAMES), "calibration_sets": calibration_set_names()}
    if json_output:
        print_json(listing)
        return
    print_table("datasets", ["name"], [[name] for name in listing["datasets"]])
    print_table("calibration sets (calib:NAME)", ["name"], [[name] for name in listing["calibration_sets"]])


@app.command("train-standin")
def train_standin_command(
    model: Annotated[str, typer.Option(help="Bundled stand-in to train")] = "lpmr-tiny-fmnist",
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 10,
    threads: Annotated[int, typer.Option(help="Torch threads")] = 2,
    json_output: JsonOption = False,
) -> None:
    """Train a bundled stand-in CLIP on Fashion-MNIST train and write weights + model card."""
    from lpmr_edge.standin import build_standin
    from lpmr_edge.training import TrainConfig

    record = build_standin(TrainConfig(model=model, epochs=epochs, threads=threads), log=console.print)
    if json_output:
        print_json(record)
