"""Build a bundled stand-in: train, save weights, evaluate through the torch reference, write the card."""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lpmr_edge.manifest import atomic_write_bytes, machine_info, now_utc, sha256_file, tool_versions
from lpmr_edge.models import load_model
from lpmr_edge.models.bundled import BUNDLED_MODELS, CONFIG_DIR
from lpmr_edge.runtimes.torch_runtime import TorchRuntime
from lpmr_edge.suite import EvalSettings, evaluate
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
  {train_seconds:.0f} s wall time on {cpu}.
- **Loss:** symmetric InfoNCE with every same-class caption in the batch counted as a positive.
- **Weights:** `{weights_file}`, sha256 `{sha256}`
- **Zero-shot, Fashion-MNIST test split (10,000 images), torch FP32, the model's own logit scale
  ({logit_scale:.2f}), {n_templates} templates averaged:** top-1 **{top1:.4f}**, top-5 {top5:.4f}
  (`lpmr-edge eval --model {name} --runtime torch --json` reproduces these).
- **Tool versions:** torch {torch}, open_clip_torch {open_clip}. Built {created}.
"""


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
        result = evaluate(TorchRuntime(clip, threads=config.threads), Path(results), EvalSettings())
    sha256 = sha256_file(bundled.weights_path)
    atomic_write_bytes(bundled.weights_path.with_suffix(".sha256"),
                       f"{sha256}  {bundled.weights_path.name}\n".encode())
    versions = tool_versions()
    card = CARD_TEMPLATE.format(
        name=config.model, architecture=bundled.architecture, n_templates=len(result["dataset"]["templates"]),
        config=json.dumps(json.loads((CONFIG_DIR / f"{bundled.architecture}.json").read_text())),
        parameters=sum(t.numel() for t in state.values()), size_mb=bundled.weights_path.stat().st_size / 1e6,
        **asdict(config), train_seconds=record["train_seconds"], cpu=machine_info()["cpu"],
        weights_file=f"lpmr_edge/models/weights/{bundled.weights_path.name}", sha256=sha256,
        logit_scale=clip.logit_scale, top1=result["metrics"]["accuracy"]["top1"],
        top5=result["metrics"]["accuracy"]["top5"], torch=versions["torch"],
        open_clip=versions["open_clip_torch"], created=now_utc())
    atomic_write_bytes(bundled.weights_path.with_suffix(".md"), card.encode())
    record.update(sha256=sha256, zero_shot=result["metrics"]["accuracy"])
    log(f"{config.model}: top-1 {record['zero_shot']['top1']:.4f} on Fashion-MNIST test; "
        f"weights {bundled.weights_path}")
    return record
