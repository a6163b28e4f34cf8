"""Commands of the foundation: eval, models, datasets, train-standin."""
from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lpmr_edge.backends import RUNTIME_NAMES
from lpmr_edge.cli.app import app
from lpmr_edge.cli.params import (
    DATASET,
    DEVICE,
    DURATION,
    EXISTING_DIR,
    LOGIT_SCALE,
    MARGIN,
    MODEL_SPEC,
    OBJECTIVE,
    OUTPUT_DIR,
    POSITIVE_INT,
    RUNTIME,
    SEED,
    STANDIN,
    SUITE,
)
from lpmr_edge.cli.ui import console, print_json, print_table, progress_bar
from lpmr_edge.errors import UserError
from lpmr_edge.sequential import SettleSettings
from lpmr_edge.training import TrainConfig

ModelOption = Annotated[str | None, typer.Option("--model", "-m", parser=MODEL_SPEC, help="Model spec: lpmr-tiny-fmnist, "
                                                    "random:ARCH, ARCH:TAG, hf-hub:ORG/NAME or ARCH:/path/to/weights")]
ArtifactOption = Annotated[Path | None, typer.Option("--artifact", "-a", parser=EXISTING_DIR,
                                                     help="Exported artifact directory")]
SETTLE_OBJECTIVES = ("accuracy (top-1 error) | ece (decided on the Brier score) | nll | auroc | auroc:SET | auroc:worst "
                     "| worst-group")
SettleMarginOption = Annotated[list[str] | None, typer.Option(parser=MARGIN, help="With --until-settled: equivalence "
                                                              "margin METRIC=VALUE, as for pick")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout")]
DeviceOption = Annotated[str, typer.Option("--device", "-d", parser=DEVICE, help="Where the artifact runs: local (in process), "
                                           "local?python=PATH, ssh://user@host:port?python=PATH&workdir=DIR&"
                                           "config=SSH_CONFIG (user, port, options optional) or emu-arm64 "
                                           "(emulated: correctness, no latencies)")]


def with_option_group(parameters: list[inspect.Parameter], argument: str,
                      build: Callable[..., Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator: add ``parameters`` (keyword-only, Typer-annotated) as options of a command, which receives
    them combined as ``argument=build(**values)``; commands share an option group without repeating it."""
    names = [parameter.name for parameter in parameters]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            values = {name: kwargs.pop(name) for name in names}
            command(**kwargs, **{argument: build(**values)})

        kept = [parameter for parameter in signature.parameters.values() if parameter.name != argument]
        wrapper.__signature__ = signature.replace(parameters=[*kept, *parameters])  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _settle_settings(until_settled: bool, budget: float | None, shard_size: int) -> SettleSettings | None:
    """The ``--until-settled`` options as settings (None without it); the budget runs from now."""
    if not until_settled:
        if budget is not None:
            raise UserError("--budget bounds an evaluation until settled; add --until-settled")
        return None
    return SettleSettings(shard_size=shard_size, deadline=None if budget is None else time.monotonic() + budget)


_SETTLE_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                      annotation=Annotated[kind, typer.Option(*flags, **options, help=text)])
    for name, kind, default, flags, options, text in (
        ("until_settled", bool, False, ("--until-settled",), {},
         ("Visit the images of each evaluation set (ID, OOD, groups) in seeded orders, shard by shard, and stop when the paired decision on the "
          "objective is settled at 95% (anytime-valid confidence sequences) or the budget is spent")),
        ("budget", float | None, None, ("--budget",), {"parser": DURATION},
         "Wall-time budget of the command with --until-settled, e.g. 90s, 30m, 2h (checked after each shard)"),
        ("shard_size", int, 200, ("--shard-size",), {"parser": POSITIVE_INT},
         "Images per shard of each evaluation set with --until-settled"),
    )
]
with_settle_options = with_option_group(_SETTLE_PARAMETERS, "until", _settle_settings)
"""Add ``--until-settled``, ``--budget`` and ``--shard-size`` to a command; it receives ``until: SettleSettings | None``."""


def default_results_dir(runtime: str, precision: str, model: str, device: str | None = None) -> Path:
    """Where results go when --out is not given (``device``: the label of a device other than this process)."""
    name = f"{model}-{runtime}-{precision}" + (f"-on-{device}" if device else "")
    return Path("lpmr-results") / "eval" / name.replace(":", "_").replace("/", "_")


@app.command("eval")
@with_settle_options
def eval_command(
    model: ModelOption = None,
    runtime: Annotated[str | None, typer.Option(parser=RUNTIME, help=f"{' | '.join(RUNTIME_NAMES)} "
                                                   "(default: torch, or the artifact's runtime)")] = None,
    artifact: ArtifactOption = None,
    suite: Annotated[str, typer.Option(parser=SUITE, help="basic (ID accuracy + calibration) | quick | full | "
                                       "path/to/suite.toml")] = "basic",
    dataset: Annotated[str | None, typer.Option(parser=DATASET, help="ID dataset name or folder (default: the suite's, "
                                                   "fmnist-test)")] = None,
    limit: Annotated[int | None, typer.Option(parser=POSITIVE_INT, help="At most N images per evaluation set (the first N)")] = None,
    logit_scale: Annotated[str | None, typer.Option(parser=LOGIT_SCALE, help="Logits = scale x cosine: 'model' (the model's own) "
                                                       "or a number such as 100 (default: the suite's)")] = None,
    seed: Annotated[int, typer.Option(parser=SEED, help="Seed of corruptions, subsets, splits and bootstrap")] = 0,
    batch_size: Annotated[int, typer.Option(parser=POSITIVE_INT, help="Images per batch")] = 64,
    threads: Annotated[int | None, typer.Option(parser=POSITIVE_INT, help="Runtime threads (default: all cores)")] = None,
    skip_bad_images: Annotated[bool, typer.Option(help="Skip unreadable images (counted) instead of failing")] = False,
    out: Annotated[Path | None, typer.Option(parser=OUTPUT_DIR, help="Results directory")] = None,
    json_output: JsonOption = False,
    device: DeviceOption = "local",
    objective: Annotated[str, typer.Option(parser=OBJECTIVE, help="With --until-settled: what the comparison with the "
                                           f"FP32 reference decides on: {SETTLE_OBJECTIVES}")] = "ece",
    margin: SettleMarginOption = None,
    *,
    until: SettleSettings | None,
) -> None:
    """Reliability suite through a runtime: writes per-sample outputs, metrics with 95% CIs and a manifest.
    With --until-settled, the runtime and the torch FP32 reference (results in OUT/reference) are compared
    shard by shard until the comparison on the objective is settled or the budget is spent."""
    from lpmr_edge.pick import Constraints
    from lpmr_edge.runtimes.factory import open_runtime
    from lpmr_edge.suite import EvalSettings, evaluate, headline_metrics, key_metrics, load_suite

    load_suite(suite)  # a bad suite file fails before the runtime is opened
    constraints = Constraints.from_options(objective=objective, margin=margin)
    if until is not None:
        from lpmr_edge.suite.settle_plan import objective_loss

        objective_loss(objective)  # an objective without a per-image loss fails before the runtime is opened
    settled = None
    engine = open_runtime(runtime, model=model, artifact=artifact, threads=threads, device=device)
    try:
        description = engine.describe()
        out = out or default_results_dir(engine.name, description["precision"], engine.model_info["spec"],
                                         description.get("device", {}).get("label"))
        settings = EvalSettings(dataset=dataset, limit=limit, batch_size=batch_size, seed=seed,
                                skip_bad_images=skip_bad_images, suite=suite,
                                logit_scale=logit_scale)  # LOGIT_SCALE gave 'model' or a float
        if until is None:
            result = evaluate(engine, out, settings, progress=progress_bar)
        else:
            from lpmr_edge.suite.settle import against_reference

            result, settled = against_reference(engine, out, settings, objective, constraints.margin(constraints.metric),
                                                until, log=console.print, progress=progress_bar)
    finally:
        engine.close()  # stops a device's server: nothing is left running there
    summary = {"top1": result["metrics"]["accuracy"]["top1"], "top5": result["metrics"]["accuracy"]["top5"],
               "n": result["n"], "model": result["model"], "model_label": result["model_label"],
               "runtime": result["runtime"], "precision": result["precision"],
               "executed_precision": result["executed_precision"], "suite": result["suite"]["name"],
               "results_dir": str(out), **key_metrics(result["metrics"])}
    if settled is not None:
        summary["sequential"] = settled.describe()
    if json_output:
        print_json(summary)
        return
    print_table(f"{result['model']} ({result['model_label']}) via {result['runtime']} "
                f"{result['executed_precision']}, suite {result['suite']['name']}, "
                f"{result['dataset']['name']} n={result['n']}", ["metric", "value", "95% CI"],
                [[label, value, format_interval(ci)] for _, label, value, ci in headline_metrics(result["metrics"])])
    if settled is not None:
        console.print(f"sequential: {settled.summary()}", highlight=False)
    console.print(f"results: {out}")


def format_interval(ci: list | tuple | None) -> str:
    """A CI as 'low .. high' (or '-' when undefined)."""
    if not ci or ci[0] is None:
        return "-"
    return f"{ci[0]:.4f} .. {ci[1]:.4f}"


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
    model: Annotated[str, typer.Option(parser=STANDIN, help="Bundled stand-in to train")] = "lpmr-tiny-fmnist",
    epochs: Annotated[int | None, typer.Option(parser=POSITIVE_INT, help="Training epochs (default: the stand-in's, "
                                               f"{TrainConfig.epochs} for lpmr-tiny-fmnist)")] = None,
    threads: Annotated[int, typer.Option(parser=POSITIVE_INT, help="Torch threads (the result depends on it)")] = TrainConfig.threads,
    json_output: JsonOption = False,
) -> None:
    """Train a bundled stand-in CLIP on Fashion-MNIST train and write weights + model card."""
    from lpmr_edge.standin import build_standin

    record = build_standin(TrainConfig.for_model(model, epochs=epochs, threads=threads), log=console.print)
    if json_output:
        print_json(record)
