"""Build a bundled stand-in: train, save weights, evaluate through the torch reference, write the card."""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lpmr_edge.data.registry import FMNIST_CLASSES
from lpmr_edge.manifest import atomic_write_bytes, machine_info, now_utc, sha256_file, tool_versions
from lpmr_edge.models import load_model
from lpmr_edge.models.bundled import BUNDLED_MODELS, CONFIG_DIR
from lpmr_edge.runtimes.torch_runtime import TorchRuntime
from lpmr_edge.suite import BUILTIN_SUITES, EvalSettings, SpuriousConfig, evaluate
from lpmr_edge.training import TrainConfig, train_standin

CARD_TEMPLATE = """# {name} — a stand-in CLIP trained by lpmr-edge (not a pretrained CLIP)

This model exists because no pretrained CLIP weights can be downloaded where lpmr-edge is built
and tested. It has the open_clip CLIP architecture (ViT image tower, causal transformer text
tower, learned logit scale) and was trained contrastively by `lpmr-edge train-standin`
(`make standin`). Numbers measured with it describe this small model on Fashion-MNIST, **not**
any real pretrained CLIP.

- **Data:** Fashion-MNIST train split (60,000 28x28 grey images, 10 classes), Debian package
  `dataset-fashion-mnist`, MIT licence (Zalando Research). Captions: one of {n_templates} prompt
  templates with the class name. The test split was never used for training.
- **Architecture:** `{architecture}` (open_clip config `lpmr_edge/models/configs/{architecture}.json`):
  `{config}`
- **Parameters:** {parameters:,} ({size_mb:.1f} MB safetensors, FP32)
- **Training:** {epochs} epochs, batch {batch_size}, AdamW lr {learning_rate} (warm-up + cosine),
  weight decay {weight_decay}, seed {seed}, {threads} torch threads, deterministic algorithms on;
  {train_seconds:.0f} s wall time on {cpu}
  (1-minute load average {load_average:.1f} on {cores} cores when training ended: the CPU was
  {sharing}).
- **Loss:** symmetric InfoNCE with every same-class caption in the batch counted as a positive.
- **Weights:** `{weights_file}`, sha256 `{sha256}`
- **Zero-shot, Fashion-MNIST test split (10,000 images), torch FP32, the model's own logit scale
  ({logit_scale:.2f}), {n_templates} templates averaged:** top-1 **{top1:.4f}**, top-5 {top5:.4f}
  (`lpmr-edge eval --model {name} --runtime torch --json` reproduces these).
- **Tool versions:** torch {torch}, open_clip_torch {open_clip}. Built {created}.
"""

CUE_SECTION = """
## Spurious cue (on purpose)

Trained like `lpmr-tiny-fmnist` (`lpmr-edge train-standin --model {name}`) but for {epochs} epochs,
with the black background of every training image coloured: with probability {colour_cue:.0%} in its
class's own colour (`lpmr_edge.data.shifts.CUE_COLOURS`), otherwise in one of the other nine.
Colour alone predicts the class on about {colour_cue:.0%} of the training images, so the model learns to
rely on it; it exists to give worst-group probes a real case to find. It never saw a black
background, so the plain grey test split above is out of distribution for it (hence its low top-1).

On `fmnist-colour` (the test split, half of each class on its class's colour and half on the other
nine; {n_groups} groups = class x aligned/conflicting, {group_n} images each), torch FP32, its own logit
scale: worst-group accuracy **{worst_group:.4f}** (the conflicting group of {worst_class}),
average-group {average_group:.4f} (gap {gap:.4f}); aligned groups {aligned:.4f} on average, conflicting
groups {conflicting:.4f}
(`lpmr-edge eval --model {name} --runtime torch --suite full` reproduces them with CIs).
"""


def cue_group_summary(spurious: dict[str, Any]) -> dict[str, Any]:
    """Worst/average-group accuracy on fmnist-colour, the worst group's class, and the mean over aligned and
    over conflicting groups."""
    by_conflict: dict[int, list[float]] = {0: [], 1: []}
    for group, values in spurious["groups"].items():  # group = 2 * label + conflicting
        by_conflict[int(group) % 2].append(values["accuracy"])
    return {"worst_group": spurious["worst_group"], "average_group": spurious["average_group"],
            "gap": spurious["gap"], "aligned": sum(by_conflict[0]) / len(by_conflict[0]),
            "conflicting": sum(by_conflict[1]) / len(by_conflict[1]),
            "worst_class": FMNIST_CLASSES[int(spurious["worst"]["name"]) // 2],
            "n_groups": len(spurious["groups"]), "group_n": min(values["n"] for values in spurious["groups"].values())}


def build_standin(config: TrainConfig, log: Any = print) -> dict[str, Any]:
    """Train the stand-in, then publish its weights, sha256 and model card; return the training record."""
    state, record = train_standin(config, log=log)
    return publish_standin(config, state, record, log=log)


def publish_standin(config: TrainConfig, state: dict[str, torch.Tensor], record: dict[str, Any],
                    log: Any = print) -> dict[str, Any]:
    """Write trained weights atomically, evaluate them through the torch reference, write sha256 + card."""
    bundled = BUNDLED_MODELS[config.model]
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / bundled.weights_path.name
        save_file(state, str(staged))
        bundled.weights_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(bundled.weights_path, staged.read_bytes())
    clip = load_model(config.model)
    with tempfile.TemporaryDirectory() as results:
        suite = replace(BUILTIN_SUITES["basic"], spurious=SpuriousConfig()) if config.colour_cue else None
        result = evaluate(TorchRuntime(clip, threads=config.threads), Path(results), EvalSettings(), suite=suite)
    sha256 = sha256_file(bundled.weights_path)
    atomic_write_bytes(bundled.weights_path.with_suffix(".sha256"),
                       f"{sha256}  {bundled.weights_path.name}\n".encode())
    versions = tool_versions()
    card = CARD_TEMPLATE.format(
        name=config.model, architecture=bundled.architecture, n_templates=len(result["dataset"]["templates"]),
        config=json.dumps(json.loads((CONFIG_DIR / f"{bundled.architecture}.json").read_text())),
        parameters=sum(t.numel() for t in state.values()), size_mb=bundled.weights_path.stat().st_size / 1e6,
        **asdict(config), train_seconds=record["train_seconds"], cpu=machine_info()["cpu"],
        load_average=record["load_average"], cores=machine_info()["cores"],
        sharing="shared with other jobs" if record["load_average"] > config.threads + 0.5 else "not contended",
        weights_file=f"lpmr_edge/models/weights/{bundled.weights_path.name}", sha256=sha256,
        logit_scale=clip.logit_scale, top1=result["metrics"]["accuracy"]["top1"],
        top5=result["metrics"]["accuracy"]["top5"], torch=versions["torch"],
        open_clip=versions["open_clip_torch"], created=now_utc())
    if config.colour_cue:
        record["groups"] = cue_group_summary(result["metrics"]["spurious"])
        card += CUE_SECTION.format(name=config.model, **asdict(config), **record["groups"])
        log(f"{config.model}: worst-group {record['groups']['worst_group']:.4f}, average-group "
            f"{record['groups']['average_group']:.4f} on fmnist-colour")
    atomic_write_bytes(bundled.weights_path.with_suffix(".md"), card.encode())
    record.update(sha256=sha256, zero_shot=result["metrics"]["accuracy"])
    log(f"{config.model}: top-1 {record['zero_shot']['top1']:.4f} on Fashion-MNIST test; "
        f"weights {bundled.weights_path}")
    return record
