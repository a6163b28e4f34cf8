"""Train the bundled stand-in CLIP contrastively on Fashion-MNIST train (deterministic, CPU).

Each image is paired with a caption made from a random prompt template and its class name.
The loss is CLIP's symmetric InfoNCE over the batch, with every same-class caption counted
as a positive (a batch of 256 draws from only 10 classes, so plain one-hot targets would
push apart captions that describe the same thing).

With ``colour_cue`` > 0 the black background of each training image is coloured (after
augmentation): its class's own colour with that probability, else another (a spurious cue for
worst-group probes, see ``lpmr_edge.data.shifts``).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lpmr_edge.data.registry import FMNIST_CLASSES, FMNIST_TEMPLATES, fashion_mnist_arrays
from lpmr_edge.data.shifts import colour_background, correlated_colour_ids
from lpmr_edge.errors import UserError
from lpmr_edge.models import load_model
from lpmr_edge.models.bundled import BUNDLED_MODELS
from lpmr_edge.stats import seeded_rng


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a stand-in training run."""

    model: str = "lpmr-tiny-fmnist"
    epochs: int = 8
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    seed: int = 0
    threads: int = 1
    colour_cue: float = 0.0  # probability that a training image's background has its class's colour; 0 = grey

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> TrainConfig:
        """The config a bundled stand-in is trained with, with any non-None ``overrides`` applied."""
        if model not in BUNDLED_MODELS:
            raise UserError(f"unknown bundled stand-in '{model}'; use one of {', '.join(BUNDLED_MODELS)}")
        given = {name: value for name, value in overrides.items() if value is not None}
        return cls(model=model, **{**BUNDLED_MODELS[model].training, **given})


def _normalise(pixels: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 ``[B,28,28]`` (grey) or ``[B,28,28,3]`` (RGB) -> normalised float ``[B,3,28,28]``, as eval does."""
    images = pixels.float() / 255.0
    images = images.unsqueeze(1).expand(-1, 3, -1, -1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return (images - mean) / std


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels (zero padded)."""
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None], pixels.flip(-1), pixels)
    padded = F.pad(pixels, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[:, dy:dy + 28, dx:dx + 28]


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with all same-class pairs as positives (soft targets)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale * image_features @ text_features.T
    positives = (labels[:, None] == labels[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def train_standin(config: TrainConfig, log: Any = print) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the stand-in; return its state dict and a record of the run."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(config.seed)
    clip = load_model(f"random:{BUNDLED_MODELS[config.model].architecture}")
    model = clip.model.train()
    mean, std = BUNDLED_MODELS[config.model].preprocess["mean"][0], BUNDLED_MODELS[config.model].preprocess["std"][0]

    images, labels = (torch.from_numpy(a.copy()) for a in fashion_mnist_arrays("train"))
    colour_ids = (correlated_colour_ids(labels.numpy(), config.colour_cue, seeded_rng(config.seed, "colour-cue"))
                  if config.colour_cue else None)
    captions = [template.format(name) for name in FMNIST_CLASSES for template in FMNIST_TEMPLATES]
    caption_tokens = torch.from_numpy(clip.tokenize(captions))
    n_templates = len(FMNIST_TEMPLATES)

    steps_per_epoch = len(images) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps)
                                                 * 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    started = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            batch_labels = labels[batch]
            pixels = _augment(images[batch], generator)
            if colour_ids is not None:
                pixels = torch.from_numpy(colour_background(pixels.numpy(), colour_ids[batch.numpy()]))
            template = torch.randint(0, n_templates, (len(batch),), generator=generator)
            all_text = model.encode_text(caption_tokens)
            text_features = all_text[batch_labels * n_templates + template]
            image_features = model.encode_image(_normalise(pixels, mean, std))
            loss = contrastive_loss(image_features, text_features, batch_labels, model.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
        log(f"epoch {epoch + 1}/{config.epochs}: loss {np.mean(losses):.4f}, "
            f"logit scale {model.logit_scale.exp().item():.1f}, {time.perf_counter() - started:.0f} s")
    record = {"config": asdict(config), "train_seconds": round(time.perf_counter() - started, 1),
              "load_average": os.getloadavg()[0],
              "train_samples": len(images), "torch_threads": config.threads}
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    return state, record
